//! SQLite implementation of [`DsStore`](super::store::DsStore).
//!
//! Every write is one `BEGIN IMMEDIATE` transaction; the commit path's compare-and-swap on
//! the epoch (`UPDATE ... WHERE epoch = old`) is what makes exactly one commit per epoch win,
//! across processes too. It must never log or inspect message bytes.

use async_trait::async_trait;
use sealgate_proto::api::MailboxEvent;
use sqlx::SqliteConnection;

use super::engine::application_epoch_ok;
use super::store::{
    AcceptedCommit, ApplicationOutcome, Delivery, DsStore, GroupState, GroupSummary, NewGroup,
    RosterEntry, StoredGroupInfo, StoredMessage, kind_str, parse_kind,
};
use crate::store::StoreError;
use crate::store::sqlite::SqliteStore;

fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} out of range")))
}

fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} out of range")))
}

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
    conn: &mut sqlx::SqliteConnection,
    group_id: &str,
) -> Result<Vec<RosterEntry>, StoreError> {
    let rows: Vec<RosterRow> = sqlx::query_as(
        "SELECT leaf_index, user_id, device_id, signature_key FROM ds_members \
         WHERE group_id = ? ORDER BY leaf_index",
    )
    .bind(group_id)
    .fetch_all(&mut *conn)
    .await?;
    roster_from_rows(rows)
}

async fn insert_roster(
    tx: &mut SqliteConnection,
    group_id: &str,
    roster: &[RosterEntry],
) -> Result<(), StoreError> {
    for m in roster {
        sqlx::query(
            "INSERT INTO ds_members (group_id, leaf_index, user_id, device_id, signature_key) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(group_id)
        .bind(i64::from(m.leaf_index))
        .bind(&m.user_id)
        .bind(&m.device_id)
        .bind(&m.signature_key)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

async fn insert_message(tx: &mut SqliteConnection, m: &StoredMessage) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO ds_messages (message_id, group_id, kind, epoch, sender_user, sender_device, \
         bytes, size, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Store a message once and a pointer per recipient; nothing at all if there is no recipient
/// (a row no pointer refers to would never be collected).
async fn deliver(tx: &mut SqliteConnection, d: &Delivery) -> Result<(), StoreError> {
    if d.recipients.is_empty() {
        return Ok(());
    }
    insert_message(tx, &d.message).await?;
    for device in &d.recipients {
        sqlx::query("INSERT INTO ds_mailbox (device_id, message_id) VALUES (?, ?)")
            .bind(device)
            .bind(&d.message.message_id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

#[async_trait]
impl DsStore for SqliteStore {
    async fn create_group(&self, g: &NewGroup) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO ds_groups (group_id, tenant_id, epoch, snapshot, group_info, \
             group_info_epoch, created_by, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (group_id) DO NOTHING",
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
            sqlx::query_as("SELECT tenant_id, epoch FROM ds_groups WHERE group_id = ?")
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
            sqlx::query_as("SELECT tenant_id, epoch, snapshot FROM ds_groups WHERE group_id = ?")
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
        let row: Option<(Option<i64>, Option<Vec<u8>>)> =
            sqlx::query_as("SELECT group_info_epoch, group_info FROM ds_groups WHERE group_id = ?")
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
        let mut tx = self.writer.begin().await?;
        let new_epoch = to_i64(c.new_epoch, "epoch")?;
        let swapped = sqlx::query(
            "UPDATE ds_groups SET epoch = ?, snapshot = ?, \
             group_info = COALESCE(?, group_info), \
             group_info_epoch = CASE WHEN ? IS NULL THEN group_info_epoch ELSE ? END, \
             updated_at = ? \
             WHERE group_id = ? AND epoch = ?",
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
        sqlx::query("DELETE FROM ds_members WHERE group_id = ?")
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
        let mut tx = self.writer.begin().await?;
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT epoch FROM ds_groups WHERE group_id = ? AND tenant_id = ?")
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
             WHERE b.device_id = ? AND b.seq > ? ORDER BY b.seq LIMIT ?",
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
        let mut tx = self.writer.begin().await?;
        let deleted: Vec<(String,)> = sqlx::query_as(
            "DELETE FROM ds_mailbox WHERE device_id = ? AND seq <= ? RETURNING message_id",
        )
        .bind(device_id)
        .bind(up_to)
        .fetch_all(&mut *tx)
        .await?;
        let removed = deleted.len() as u64;
        let mut ids: Vec<String> = deleted.into_iter().map(|r| r.0).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in &ids {
            sqlx::query(
                "DELETE FROM ds_messages WHERE message_id = ? \
                 AND NOT EXISTS (SELECT 1 FROM ds_mailbox WHERE message_id = ?)",
            )
            .bind(id)
            .bind(id)
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::conformance;
    use super::*;

    // The contract tests run for every backend from `store::conformance::backend_suite!`;
    // this property test adds random CAS sequences on SQLite.
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn random_commit_attempts_advance_epoch_by_one(
            attempts in proptest::collection::vec(0u64..6, 1..20)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let (_dir, store) = SqliteStore::open_temp().await;
                conformance::random_cas_sequence(&store, &attempts).await;
            });
        }
    }
}
