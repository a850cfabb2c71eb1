//! [`PolicyStore`] on the embedded SQLite store. Version numbers are assigned inside the
//! write transaction, so two concurrent `PUT /v1/policy` calls get consecutive versions and
//! both land in the audit trail.

use async_trait::async_trait;
use sealgate_proto::policy::PolicyChange;
use sealgate_proto::send::MessageClass;

use super::store::{HoldRecord, PolicyStore, StoredPolicy};
use crate::store::StoreError;
use crate::store::sqlite::SqliteStore;

type HoldRow = (
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
);

fn hold_of(r: HoldRow) -> Result<HoldRecord, StoreError> {
    Ok(HoldRecord {
        hold_id: r.0,
        tenant_id: r.1,
        recipient: r.2,
        class: MessageClass::parse(&r.3)
            .ok_or_else(|| StoreError::Corrupt(format!("hold class {:?}", r.3)))?,
        created_at: r.4,
        expires_at: r.5,
        ready_at: r.6,
        done_at: r.7,
    })
}

const HOLD_COLUMNS: &str =
    "hold_id, tenant_id, recipient, class, created_at, expires_at, ready_at, done_at";

#[async_trait]
impl PolicyStore for SqliteStore {
    async fn policy(&self, tenant_id: &str) -> Result<Option<StoredPolicy>, StoreError> {
        let row: Option<(i64, String, String, i64)> = sqlx::query_as(
            "SELECT version, document, digest, updated_at FROM tenant_policies WHERE tenant_id = ?",
        )
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(version, document, digest, updated_at)| StoredPolicy {
                version: u64::try_from(version).unwrap_or(0),
                document,
                digest,
                updated_at,
            }),
        )
    }

    async fn set_policy(
        &self,
        tenant_id: &str,
        document: &str,
        digest: &str,
        actor: &str,
        now_ms: i64,
    ) -> Result<StoredPolicy, StoreError> {
        let mut tx = self.writer.begin().await?;
        let old: Option<(i64, String)> =
            sqlx::query_as("SELECT version, digest FROM tenant_policies WHERE tenant_id = ?")
                .bind(tenant_id)
                .fetch_optional(&mut *tx)
                .await?;
        let (old_version, old_digest) = old.unwrap_or((0, super::default_digest()));
        let version = old_version + 1;
        sqlx::query(
            "INSERT INTO tenant_policies (tenant_id, version, document, digest, updated_at)
             VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (tenant_id) DO UPDATE SET version = excluded.version,
                 document = excluded.document, digest = excluded.digest,
                 updated_at = excluded.updated_at",
        )
        .bind(tenant_id)
        .bind(version)
        .bind(document)
        .bind(digest)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO policy_audit (tenant_id, version, previous_version, actor, at, digest,
                 previous_digest, document) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(tenant_id)
        .bind(version)
        .bind(old_version)
        .bind(actor)
        .bind(now_ms)
        .bind(digest)
        .bind(&old_digest)
        .bind(document)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(StoredPolicy {
            version: u64::try_from(version).unwrap_or(0),
            document: document.to_owned(),
            digest: digest.to_owned(),
            updated_at: now_ms,
        })
    }

    async fn policy_history(
        &self,
        tenant_id: &str,
        limit: u32,
    ) -> Result<Vec<PolicyChange>, StoreError> {
        let rows: Vec<(i64, i64, String, i64, String, String)> = sqlx::query_as(
            "SELECT version, previous_version, actor, at, digest, previous_digest
             FROM policy_audit WHERE tenant_id = ? ORDER BY version DESC LIMIT ?",
        )
        .bind(tenant_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| PolicyChange {
                version: u64::try_from(r.0).unwrap_or(0),
                previous_version: u64::try_from(r.1).unwrap_or(0),
                actor: r.2,
                at: r.3,
                digest: r.4,
                previous_digest: r.5,
            })
            .collect())
    }

    async fn create_hold(&self, h: &HoldRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO send_holds (hold_id, tenant_id, recipient, class, created_at, expires_at,
                 ready_at, done_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&h.hold_id)
        .bind(&h.tenant_id)
        .bind(&h.recipient)
        .bind(h.class.as_str())
        .bind(h.created_at)
        .bind(h.expires_at)
        .bind(h.ready_at)
        .bind(h.done_at)
        .execute(&mut *self.writer.lock().await)
        .await?;
        Ok(())
    }

    async fn hold(&self, tenant_id: &str, hold_id: &str) -> Result<Option<HoldRecord>, StoreError> {
        let row: Option<HoldRow> = sqlx::query_as(&format!(
            "SELECT {HOLD_COLUMNS} FROM send_holds WHERE tenant_id = ? AND hold_id = ?"
        ))
        .bind(tenant_id)
        .bind(hold_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(hold_of).transpose()
    }

    async fn open_holds(&self, tenant_id: &str, limit: u32) -> Result<Vec<HoldRecord>, StoreError> {
        let rows: Vec<HoldRow> = sqlx::query_as(&format!(
            "SELECT {HOLD_COLUMNS} FROM send_holds WHERE tenant_id = ? AND done_at IS NULL
             ORDER BY created_at LIMIT ?"
        ))
        .bind(tenant_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(hold_of).collect()
    }

    async fn mark_holds_ready(
        &self,
        tenant_id: &str,
        recipients: &[String],
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        for r in recipients {
            n += sqlx::query(
                "UPDATE send_holds SET ready_at = ? WHERE tenant_id = ? AND recipient = ?
                 AND ready_at IS NULL AND done_at IS NULL AND expires_at > ?",
            )
            .bind(now_ms)
            .bind(tenant_id)
            .bind(r)
            .bind(now_ms)
            .execute(&mut *self.writer.lock().await)
            .await?
            .rows_affected();
        }
        Ok(n)
    }

    async fn finish_hold(
        &self,
        tenant_id: &str,
        hold_id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE send_holds SET done_at = ? WHERE tenant_id = ? AND hold_id = ? AND done_at IS NULL",
        )
        .bind(now_ms)
        .bind(tenant_id)
        .bind(hold_id)
        .execute(&mut *self.writer.lock().await)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
