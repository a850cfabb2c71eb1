//! PostgreSQL implementation of [`DsStore`](crate::ds::store::DsStore).
//!
//! One commit per epoch across processes: the commit's `UPDATE ... WHERE epoch = old` waits
//! for a concurrent winner and then re-checks the epoch, so exactly one of any number of
//! commits against the same epoch changes a row. An application message reads epoch and
//! roster under a share lock on the group row, so it fans out to the roster as it is. Mailbox
//! seqs come from per-device head rows (see `push_mailboxes`). It must never log or inspect
//! message bytes.

use async_trait::async_trait;
use sealgate_proto::api::MailboxEvent;
use sqlx::{Postgres, Transaction};

use crate::ds::engine::application_epoch_ok;
use crate::ds::store::{
    AcceptedCommit, ApplicationOutcome, Delivery, DsStore, GroupState, GroupSummary, NewGroup,
    RosterEntry, StoredGroupInfo, StoredMessage, kind_str, parse_kind,
};
use crate::store::StoreError;
use crate::store::postgres::{PgStore, push_mailboxes, to_i64, to_u64};

type RosterRow = (i64, String, String, Vec<u8>);

fn roster_from_rows(rows: Vec<RosterRow>) -> Result<Vec<RosterEntry>, StoreError> {
    rows.into_iter()
        .map(|(leaf, user_id, device_id, signature_key)| {
            Ok(RosterEntry {
                leaf_index: u32::try_from(leaf)
                    .map_err(|_| StoreError::Corrupt(format!("leaf index {leaf}")))?,
                user_id,
                device_id,
                signature_key,
            })
        })
        .collect()
}

async fn load_roster(
    conn: &mut sqlx::PgConnection,
    group_id: &str,
) -> Result<Vec<RosterEntry>, StoreError> {
    let rows: Vec<RosterRow> = sqlx::query_as(
        "SELECT leaf_index, user_id, device_id, signature_key FROM ds_members \
         WHERE group_id = $1 ORDER BY leaf_index",
    )
    .bind(group_id)
    .fetch_all(&mut *conn)
    .await?;
    roster_from_rows(rows)
}

async fn insert_roster(
    tx: &mut Transaction<'static, Postgres>,
    group_id: &str,
    roster: &[RosterEntry],
) -> Result<(), StoreError> {
    if roster.is_empty() {
        return Ok(());
    }
    let leaves: Vec<i64> = roster.iter().map(|m| i64::from(m.leaf_index)).collect();
    let users: Vec<&str> = roster.iter().map(|m| m.user_id.as_str()).collect();
    let devices: Vec<&str> = roster.iter().map(|m| m.device_id.as_str()).collect();
    let keys: Vec<&[u8]> = roster.iter().map(|m| m.signature_key.as_slice()).collect();
    sqlx::query(
        "INSERT INTO ds_members (group_id, leaf_index, user_id, device_id, signature_key) \
         SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::bytea[])",
    )
    .bind(group_id)
    .bind(&leaves)
    .bind(&users)
    .bind(&devices)
    .bind(&keys)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_message(
    tx: &mut Transaction<'static, Postgres>,
    m: &StoredMessage,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO ds_messages (message_id, group_id, kind, epoch, sender_user, sender_device, \
         bytes, size, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&m.message_id)
    .bind(&m.group_id)
    .bind(kind_str(m.kind))
    .bind(to_i64(m.epoch, "epoch")?)
    .bind(&m.sender_user)
    .bind(&m.sender_device)
    .bind(&m.bytes)
    .bind(m.bytes.len() as i64)
    .bind(m.received_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Store a message once and a pointer per recipient; nothing at all if there is no recipient
/// (a row no pointer refers to would never be collected).
async fn deliver(tx: &mut Transaction<'static, Postgres>, d: &Delivery) -> Result<(), StoreError> {
    if d.recipients.is_empty() {
        return Ok(());
    }
    insert_message(tx, &d.message).await?;
    push_mailboxes(tx, &d.recipients, &d.message.message_id).await
}

#[async_trait]
impl DsStore for PgStore {
    async fn create_group(&self, g: &NewGroup) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO ds_groups (group_id, tenant_id, epoch, snapshot, group_info, \
             group_info_epoch, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (group_id) DO NOTHING",
        )
        .bind(&g.group_id)
        .bind(&g.tenant_id)
        .bind(to_i64(g.epoch, "epoch")?)
        .bind(&g.snapshot)
        .bind(&g.group_info)
        .bind(to_i64(g.epoch, "epoch")?)
        .bind(&g.created_by)
        .bind(g.now_ms)
        .bind(g.now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        insert_roster(&mut tx, &g.group_id, &g.roster).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn group(&self, group_id: &str) -> Result<Option<GroupSummary>, StoreError> {
        // One read transaction so epoch and roster are from the same moment.
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT tenant_id, epoch FROM ds_groups WHERE group_id = $1")
                .bind(group_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((tenant_id, epoch)) = row else {
            return Ok(None);
        };
        let roster = load_roster(&mut tx, group_id).await?;
        tx.commit().await?;
        Ok(Some(GroupSummary {
            group_id: group_id.to_owned(),
            tenant_id,
            epoch: to_u64(epoch, "epoch")?,
            roster,
        }))
    }

    async fn group_state(&self, group_id: &str) -> Result<Option<GroupState>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, i64, Vec<u8>)> =
            sqlx::query_as("SELECT tenant_id, epoch, snapshot FROM ds_groups WHERE group_id = $1")
                .bind(group_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((tenant_id, epoch, snapshot)) = row else {
            return Ok(None);
        };
        let roster = load_roster(&mut tx, group_id).await?;
        tx.commit().await?;
        Ok(Some(GroupState {
            summary: GroupSummary {
                group_id: group_id.to_owned(),
                tenant_id,
                epoch: to_u64(epoch, "epoch")?,
                roster,
            },
            snapshot,
        }))
    }

    async fn group_info(&self, group_id: &str) -> Result<Option<StoredGroupInfo>, StoreError> {
        let row: Option<(Option<i64>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT group_info_epoch, group_info FROM ds_groups WHERE group_id = $1",
        )
        .bind(group_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some((Some(epoch), Some(group_info))) => Ok(Some(StoredGroupInfo {
                epoch: to_u64(epoch, "epoch")?,
                group_info,
            })),
            _ => Ok(None),
        }
    }

    async fn apply_commit(&self, c: &AcceptedCommit) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let new_epoch = to_i64(c.new_epoch, "epoch")?;
        let swapped = sqlx::query(
            "UPDATE ds_groups SET epoch = $1, snapshot = $2, \
             group_info = COALESCE($3::bytea, group_info), \
             group_info_epoch = CASE WHEN $4::bytea IS NULL THEN group_info_epoch ELSE $5 END, \
             updated_at = $6 \
             WHERE group_id = $7 AND epoch = $8",
        )
        .bind(new_epoch)
        .bind(&c.snapshot)
        .bind(c.group_info.as_deref())
        .bind(c.group_info.as_deref())
        .bind(new_epoch)
        .bind(c.now_ms)
        .bind(&c.group_id)
        .bind(to_i64(c.cas_epoch, "epoch")?)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if swapped == 0 {
            // Another commit won (or the group vanished); dropping `tx` rolls back.
            return Ok(false);
        }
        sqlx::query("DELETE FROM ds_members WHERE group_id = $1")
            .bind(&c.group_id)
            .execute(&mut *tx)
            .await?;
        insert_roster(&mut tx, &c.group_id, &c.roster).await?;
        deliver(&mut tx, &c.commit).await?;
        if let Some(w) = &c.welcome {
            deliver(&mut tx, w).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn store_application(
        &self,
        tenant_id: &str,
        m: &StoredMessage,
    ) -> Result<ApplicationOutcome, StoreError> {
        let mut tx = self.begin().await?;
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT epoch FROM ds_groups WHERE group_id = $1 AND tenant_id = $2 \
                 FOR SHARE",
        )
        .bind(&m.group_id)
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((current,)) = row else {
            return Ok(ApplicationOutcome::UnknownGroup);
        };
        let current = to_u64(current, "epoch")?;
        let roster = load_roster(&mut tx, &m.group_id).await?;
        if !roster.iter().any(|r| r.device_id == m.sender_device) {
            return Ok(ApplicationOutcome::NotMember);
        }
        if !application_epoch_ok(m.epoch, current) {
            return Ok(ApplicationOutcome::EpochOutOfRange { current });
        }
        let recipients: Vec<String> = roster
            .into_iter()
            .map(|r| r.device_id)
            .filter(|d| *d != m.sender_device)
            .collect();
        let delivery = Delivery {
            message: m.clone(),
            recipients,
        };
        deliver(&mut tx, &delivery).await?;
        tx.commit().await?;
        Ok(ApplicationOutcome::Stored {
            recipients: delivery.recipients,
        })
    }

    async fn fetch_mailbox(
        &self,
        device_id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<MailboxEvent>, StoreError> {
        type Row = (i64, String, String, i64, String, String, Vec<u8>, i64);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT b.seq, m.kind, m.group_id, m.epoch, m.sender_user, m.sender_device, \
             m.bytes, m.received_at \
             FROM ds_mailbox b JOIN ds_messages m ON m.message_id = b.message_id \
             WHERE b.device_id = $1 AND b.seq > $2 ORDER BY b.seq LIMIT $3",
        )
        .bind(device_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(
                |(seq, kind, group_id, epoch, sender_user, sender_device, message, received_at)| {
                    Ok(MailboxEvent {
                        seq,
                        kind: parse_kind(&kind)
                            .ok_or_else(|| StoreError::Corrupt(format!("message kind {kind}")))?,
                        group_id,
                        epoch: to_u64(epoch, "epoch")?,
                        sender_user,
                        sender_device,
                        message,
                        received_at,
                    })
                },
            )
            .collect()
    }

    async fn ack(&self, device_id: &str, up_to: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let deleted: Vec<(String,)> = sqlx::query_as(
            "DELETE FROM ds_mailbox WHERE device_id = $1 AND seq <= $2 RETURNING message_id",
        )
        .bind(device_id)
        .bind(up_to)
        .fetch_all(&mut *tx)
        .await?;
        let removed = deleted.len() as u64;
        let mut ids: Vec<String> = deleted.into_iter().map(|r| r.0).collect();
        ids.sort_unstable();
        ids.dedup();
        if !ids.is_empty() {
            // Lock the messages first: two devices acknowledging the last two pointers of one
            // message at once would otherwise each still see the other's pointer and leave the
            // message behind.
            sqlx::query(
                "SELECT message_id FROM ds_messages WHERE message_id = ANY($1) \
                 ORDER BY message_id FOR UPDATE",
            )
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM ds_messages m WHERE m.message_id = ANY($1) \
                 AND NOT EXISTS (SELECT 1 FROM ds_mailbox b WHERE b.message_id = m.message_id)",
            )
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(removed)
    }

    async fn stored_message_count(&self) -> Result<u64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM ds_messages")
            .fetch_one(&self.pool)
            .await?;
        to_u64(n, "count")
    }
}
