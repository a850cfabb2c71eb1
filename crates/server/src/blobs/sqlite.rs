//! SQLite implementation of [`UploadStore`](super::store::UploadStore).
//!
//! Writes are `BEGIN IMMEDIATE` transactions: the quota check and the reservation, and the
//! offset compare-and-swap and the part row, each happen atomically, across processes too.
//! It stores ids, lengths and object keys only, never ciphertext.

use async_trait::async_trait;

use super::store::{CreateOutcome, Part, Upload, UploadStore};
use crate::store::StoreError;
use crate::store::sqlite::SqliteStore;

fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} out of range")))
}

fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} out of range")))
}

type UploadRow = (
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    Option<i64>,
    i64,
);

const UPLOAD_COLUMNS: &str = "attachment_id, tenant_id, group_id, created_by, length, \
     upload_offset, created_at, completed_at, expires_at";

fn upload_from_row(r: UploadRow) -> Result<Upload, StoreError> {
    Ok(Upload {
        attachment_id: r.0,
        tenant_id: r.1,
        group_id: r.2,
        created_by: r.3,
        length: to_u64(r.4, "length")?,
        offset: to_u64(r.5, "offset")?,
        created_at: r.6,
        completed_at: r.7,
        expires_at: r.8,
    })
}

async fn load(
    conn: &mut sqlx::SqliteConnection,
    attachment_id: &str,
) -> Result<Option<Upload>, StoreError> {
    let row: Option<UploadRow> = sqlx::query_as(&format!(
        "SELECT {UPLOAD_COLUMNS} FROM blob_uploads WHERE attachment_id = ?"
    ))
    .bind(attachment_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(upload_from_row).transpose()
}

async fn usage(
    conn: &mut sqlx::SqliteConnection,
    tenant_id: &str,
    now: i64,
) -> Result<u64, StoreError> {
    let (sum,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(SUM(length), 0) FROM blob_uploads WHERE tenant_id = ? AND expires_at > ?",
    )
    .bind(tenant_id)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    to_u64(sum, "usage")
}

#[async_trait]
impl UploadStore for SqliteStore {
    async fn create_upload(
        &self,
        u: &Upload,
        quota: u64,
        now: i64,
    ) -> Result<CreateOutcome, StoreError> {
        let mut tx = self.writer.begin().await?;
        let used = usage(&mut tx, &u.tenant_id, now).await?;
        if used.saturating_add(u.length) > quota {
            return Ok(CreateOutcome::QuotaExceeded { used });
        }
        sqlx::query(&format!(
            "INSERT INTO blob_uploads ({UPLOAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&u.attachment_id)
        .bind(&u.tenant_id)
        .bind(&u.group_id)
        .bind(&u.created_by)
        .bind(to_i64(u.length, "length")?)
        .bind(to_i64(u.offset, "offset")?)
        .bind(u.created_at)
        .bind(u.completed_at)
        .bind(u.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(CreateOutcome::Created)
    }

    async fn upload(&self, attachment_id: &str) -> Result<Option<Upload>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        load(&mut conn, attachment_id).await
    }

    async fn append_part(
        &self,
        attachment_id: &str,
        part: &Part,
        now: i64,
        retention_secs: u64,
    ) -> Result<Option<Upload>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let Some(mut upload) = load(&mut tx, attachment_id).await? else {
            return Ok(None);
        };
        let end = part.offset.saturating_add(part.length);
        if upload.offset != part.offset || end > upload.length || upload.is_complete() {
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO blob_parts (attachment_id, part_offset, length, object_key) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(attachment_id)
        .bind(to_i64(part.offset, "offset")?)
        .bind(to_i64(part.length, "length")?)
        .bind(&part.object_key)
        .execute(&mut *tx)
        .await?;
        upload.offset = end;
        if end == upload.length {
            upload.completed_at = Some(now);
            upload.expires_at = now.saturating_add(to_i64(retention_secs, "retention")?);
        }
        sqlx::query(
            "UPDATE blob_uploads SET upload_offset = ?, completed_at = ?, expires_at = ? \
             WHERE attachment_id = ?",
        )
        .bind(to_i64(upload.offset, "offset")?)
        .bind(upload.completed_at)
        .bind(upload.expires_at)
        .bind(attachment_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(upload))
    }

    async fn parts(&self, attachment_id: &str) -> Result<Vec<Part>, StoreError> {
        let rows: Vec<(i64, i64, String)> = sqlx::query_as(
            "SELECT part_offset, length, object_key FROM blob_parts \
             WHERE attachment_id = ? ORDER BY part_offset",
        )
        .bind(attachment_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(offset, length, object_key)| {
                Ok(Part {
                    offset: to_u64(offset, "offset")?,
                    length: to_u64(length, "length")?,
                    object_key,
                })
            })
            .collect()
    }

    async fn expired_uploads(&self, now: i64, limit: u32) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT attachment_id FROM blob_uploads WHERE expires_at <= ? \
             ORDER BY expires_at LIMIT ?",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn delete_upload(&self, attachment_id: &str) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM blob_parts WHERE attachment_id = ?")
            .bind(attachment_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM blob_uploads WHERE attachment_id = ?")
            .bind(attachment_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn tenant_usage(&self, tenant_id: &str, now: i64) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        usage(&mut conn, tenant_id, now).await
    }
}
