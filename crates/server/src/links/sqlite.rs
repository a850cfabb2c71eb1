//! [`LinkStore`] on the embedded SQLite store. `open_link` runs in a `BEGIN IMMEDIATE`
//! transaction so the check of the code and the single hand-out of the ciphertext are one
//! step.

use async_trait::async_trait;

use super::store::{LinkMeta, LinkState, LinkStore, NewLink, OpenOutcome, Proof};
use crate::store::StoreError;
use crate::store::sqlite::SqliteStore;

type MetaRow = (
    String,
    String,
    String,
    i64,
    Option<i64>,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
);

fn meta_of(r: MetaRow) -> LinkMeta {
    LinkMeta {
        link_id: r.0,
        tenant_id: r.1,
        recipient: r.2,
        expires_at: r.3,
        otp_sent_at: r.4,
        otp_sends: u32::try_from(r.5).unwrap_or(u32::MAX),
        attempts: u32::try_from(r.6).unwrap_or(u32::MAX),
        opened_at: r.7,
        locked_at: r.8,
    }
}

const META: &str = "link_id, tenant_id, recipient, expires_at, otp_sent_at, otp_sends, attempts, \
                    opened_at, locked_at";

#[async_trait]
impl LinkStore for SqliteStore {
    async fn create_link(&self, l: &NewLink) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO secure_links (link_id, tenant_id, recipient, ciphertext, size, created_at,
                 expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&l.link_id)
        .bind(&l.tenant_id)
        .bind(&l.recipient)
        .bind(&l.ciphertext)
        .bind(i64::try_from(l.ciphertext.len()).unwrap_or(i64::MAX))
        .bind(l.created_at)
        .bind(l.expires_at)
        .execute(&mut *self.writer.lock().await)
        .await?;
        Ok(())
    }

    async fn link(&self, link_id: &str) -> Result<Option<LinkMeta>, StoreError> {
        let row: Option<MetaRow> = sqlx::query_as(&format!(
            "SELECT {META} FROM secure_links WHERE link_id = ?"
        ))
        .bind(link_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(meta_of))
    }

    async fn set_otp(
        &self,
        link_id: &str,
        otp_hash: &str,
        otp_expires_at: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE secure_links SET otp_hash = ?, otp_expires_at = ?, otp_sent_at = ?,
                 otp_sends = otp_sends + 1
             WHERE link_id = ? AND opened_at IS NULL AND locked_at IS NULL AND expires_at > ?",
        )
        .bind(otp_hash)
        .bind(otp_expires_at)
        .bind(now_ms)
        .bind(link_id)
        .bind(now_ms)
        .execute(&mut *self.writer.lock().await)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn open_link(
        &self,
        link_id: &str,
        proof: Proof<'_>,
        now_ms: i64,
        max_attempts: u32,
    ) -> Result<OpenOutcome, StoreError> {
        let mut tx = self.writer.begin().await?;
        let row: Option<(MetaRow, Option<String>, Option<i64>, Option<Vec<u8>>)> =
            sqlx::query_as::<
                _,
                (
                    String,
                    String,
                    String,
                    i64,
                    Option<i64>,
                    i64,
                    i64,
                    Option<i64>,
                    Option<i64>,
                    Option<String>,
                    Option<i64>,
                    Option<Vec<u8>>,
                ),
            >(&format!(
                "SELECT {META}, otp_hash, otp_expires_at, ciphertext FROM secure_links
                     WHERE link_id = ?"
            ))
            .bind(link_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| {
                (
                    (r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8),
                    r.9,
                    r.10,
                    r.11,
                )
            });
        let Some((meta, otp_hash, otp_expires_at, ciphertext)) = row else {
            return Ok(OpenOutcome::Unknown);
        };
        let meta = meta_of(meta);
        let state = meta.state(now_ms);
        if state != LinkState::Active {
            if state == LinkState::Expired {
                sqlx::query("UPDATE secure_links SET ciphertext = NULL WHERE link_id = ?")
                    .bind(link_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            return Ok(OpenOutcome::NotActive(state));
        }
        let matched = match proof {
            Proof::Code(code_hash) => {
                let (Some(expected), Some(otp_expires_at)) = (otp_hash, otp_expires_at) else {
                    return Ok(OpenOutcome::NoCode);
                };
                if now_ms >= otp_expires_at {
                    return Ok(OpenOutcome::NoCode);
                }
                // Both sides are digests of a random code, so comparing them leaks nothing
                // useful.
                expected == code_hash
            }
            Proof::Verified => true,
            Proof::Failed => false,
        };
        if !matched {
            let attempts = meta.attempts.saturating_add(1);
            let locked = attempts >= max_attempts;
            sqlx::query(
                "UPDATE secure_links SET attempts = ?, locked_at = ?,
                     ciphertext = CASE WHEN ? THEN NULL ELSE ciphertext END
                 WHERE link_id = ?",
            )
            .bind(i64::from(attempts))
            .bind(locked.then_some(now_ms))
            .bind(locked)
            .bind(link_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(OpenOutcome::WrongCode {
                remaining: max_attempts.saturating_sub(attempts),
            });
        }
        let Some(ciphertext) = ciphertext else {
            return Ok(OpenOutcome::NotActive(LinkState::Expired));
        };
        sqlx::query(
            "UPDATE secure_links SET opened_at = ?, ciphertext = NULL, otp_hash = NULL
             WHERE link_id = ?",
        )
        .bind(now_ms)
        .bind(link_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(OpenOutcome::Opened(ciphertext))
    }

    async fn purge_links(&self, now_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE secure_links SET ciphertext = NULL, otp_hash = NULL
             WHERE ciphertext IS NOT NULL AND expires_at <= ?",
        )
        .bind(now_ms)
        .execute(&mut *self.writer.lock().await)
        .await?;
        Ok(done.rows_affected())
    }
}
