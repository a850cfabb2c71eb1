//! SQLite implementation of [`DirectoryStore`](super::store::DirectoryStore).
//!
//! Every write runs in one `BEGIN IMMEDIATE` transaction, so check-then-act sequences (redeem
//! a token, take a KeyPackage, check the stock cap) cannot interleave with another writer. It
//! must never hand one one-time KeyPackage to two callers: taking one is a single
//! `DELETE ... RETURNING` under the write lock.

use async_trait::async_trait;
use sealgate_proto::api::KeyPackageStock;
use sqlx::SqliteConnection;

use super::store::{
    ClaimOutcome, ClaimedKp, DeviceRecord, DirectoryStore, NewDevice, NewEnrollment, NewKeyPackage,
    PublishOutcome, TenantRecord, UserRecord,
};
use crate::auth::DeviceAuth;
use crate::store::StoreError;
use crate::store::sqlite::SqliteStore;

#[derive(sqlx::FromRow)]
struct DeviceRow {
    device_id: String,
    tenant_id: String,
    user_id: String,
    signature_key: Vec<u8>,
    name: Option<String>,
    created_at: i64,
    revoked_at: Option<i64>,
}

impl From<DeviceRow> for DeviceRecord {
    fn from(r: DeviceRow) -> Self {
        DeviceRecord {
            device_id: r.device_id,
            tenant_id: r.tenant_id,
            user_id: r.user_id,
            signature_key: r.signature_key,
            name: r.name,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        }
    }
}

const DEVICE_COLUMNS: &str =
    "device_id, tenant_id, user_id, signature_key, name, created_at, revoked_at";

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

async fn stock_in(
    tx: &mut SqliteConnection,
    device_id: &str,
    now: i64,
) -> Result<KeyPackageStock, StoreError> {
    let (one_time, last_resort): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(last_resort = 0), 0), COALESCE(SUM(last_resort = 1), 0) \
         FROM key_packages WHERE device_id = ? AND expires_at > ?",
    )
    .bind(device_id)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    Ok(KeyPackageStock {
        one_time: count(one_time),
        last_resort: last_resort > 0,
    })
}

#[async_trait]
impl DirectoryStore for SqliteStore {
    async fn create_tenant(
        &self,
        tenant: &TenantRecord,
        api_key_hash: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO tenants (tenant_id, name, created_at) VALUES (?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&tenant.tenant_id)
        .bind(&tenant.name)
        .bind(tenant.created_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        sqlx::query("INSERT INTO api_keys (key_hash, tenant_id, created_at) VALUES (?, ?, ?)")
            .bind(api_key_hash)
            .bind(&tenant.tenant_id)
            .bind(tenant.created_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn list_tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT tenant_id, name, created_at FROM tenants ORDER BY created_at, name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(tenant_id, name, created_at)| TenantRecord {
                tenant_id,
                name,
                created_at,
            })
            .collect())
    }

    async fn tenant(&self, tenant_id: &str) -> Result<Option<TenantRecord>, StoreError> {
        let row: Option<(String, String, i64)> =
            sqlx::query_as("SELECT tenant_id, name, created_at FROM tenants WHERE tenant_id = ?")
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(tenant_id, name, created_at)| TenantRecord {
            tenant_id,
            name,
            created_at,
        }))
    }

    async fn tenant_by_api_key_hash(&self, hash: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT tenant_id FROM api_keys WHERE key_hash = ?")
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.0))
    }

    async fn create_enrollment(&self, e: &NewEnrollment) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let tenant: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM tenants WHERE tenant_id = ?")
            .bind(&e.tenant_id)
            .fetch_optional(&mut *tx)
            .await?;
        if tenant.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO users (tenant_id, user_id, phone, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET phone = COALESCE(excluded.phone, phone)",
        )
        .bind(&e.tenant_id)
        .bind(&e.user_id)
        .bind(&e.phone)
        .bind(e.created_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO enrollments (token_hash, tenant_id, user_id, phone, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&e.token_hash)
        .bind(&e.tenant_id)
        .bind(&e.user_id)
        .bind(&e.phone)
        .bind(e.created_at)
        .bind(e.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn register_device(
        &self,
        enrollment_token_hash: &str,
        device: &NewDevice,
        now: i64,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let redeemed: Option<(String, String)> = sqlx::query_as(
            "UPDATE enrollments SET used_at = ? \
             WHERE token_hash = ? AND used_at IS NULL AND expires_at > ? \
             RETURNING tenant_id, user_id",
        )
        .bind(now)
        .bind(enrollment_token_hash)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((tenant_id, user_id)) = redeemed else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO devices (device_id, tenant_id, user_id, token_hash, signature_key, name, \
             created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&device.device_id)
        .bind(&tenant_id)
        .bind(&user_id)
        .bind(&device.token_hash)
        .bind(&device.signature_key)
        .bind(&device.name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(DeviceRecord {
            device_id: device.device_id.clone(),
            tenant_id,
            user_id,
            signature_key: device.signature_key.clone(),
            name: device.name.clone(),
            created_at: now,
            revoked_at: None,
        }))
    }

    async fn user(&self, tenant_id: &str, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        let row: Option<(String, String, Option<String>, i64)> = sqlx::query_as(
            "SELECT tenant_id, user_id, phone, created_at FROM users \
             WHERE tenant_id = ? AND user_id = ?",
        )
        .bind(tenant_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(tenant_id, user_id, phone, created_at)| UserRecord {
                tenant_id,
                user_id,
                phone,
                created_at,
            }),
        )
    }

    async fn users_of_tenant(&self, tenant_id: &str) -> Result<Vec<UserRecord>, StoreError> {
        let rows: Vec<(String, String, Option<String>, i64)> = sqlx::query_as(
            "SELECT tenant_id, user_id, phone, created_at FROM users \
             WHERE tenant_id = ? ORDER BY user_id",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(tenant_id, user_id, phone, created_at)| UserRecord {
                tenant_id,
                user_id,
                phone,
                created_at,
            })
            .collect())
    }

    async fn device_by_token_hash(&self, hash: &str) -> Result<Option<DeviceAuth>, StoreError> {
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT tenant_id, user_id, device_id FROM devices \
             WHERE token_hash = ? AND revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(tenant_id, user_id, device_id)| DeviceAuth {
            tenant_id,
            user_id,
            device_id,
        }))
    }

    async fn device(
        &self,
        tenant_id: &str,
        device_id: &str,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let row: Option<DeviceRow> = sqlx::query_as(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE tenant_id = ? AND device_id = ?"
        ))
        .bind(tenant_id)
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(DeviceRecord::from))
    }

    async fn devices_of_user(
        &self,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let rows: Vec<DeviceRow> = sqlx::query_as(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE tenant_id = ? AND user_id = ? \
             ORDER BY created_at, device_id"
        ))
        .bind(tenant_id)
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(DeviceRecord::from).collect())
    }

    async fn devices_of_tenant(&self, tenant_id: &str) -> Result<Vec<DeviceRecord>, StoreError> {
        let rows: Vec<DeviceRow> = sqlx::query_as(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE tenant_id = ? \
             ORDER BY user_id, created_at, device_id"
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(DeviceRecord::from).collect())
    }

    async fn revoke_device(
        &self,
        tenant_id: &str,
        device_id: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let revoked = sqlx::query(
            "UPDATE devices SET revoked_at = ? \
             WHERE tenant_id = ? AND device_id = ? AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(tenant_id)
        .bind(device_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if revoked == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM key_packages WHERE device_id = ?")
            .bind(device_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn publish_key_packages(
        &self,
        device_id: &str,
        one_time: &[NewKeyPackage],
        last_resort: Option<&NewKeyPackage>,
        max_one_time: u64,
        now: i64,
    ) -> Result<PublishOutcome, StoreError> {
        let mut tx = self.writer.begin().await?;
        let device: Option<(String,)> = sqlx::query_as(
            "SELECT tenant_id FROM devices WHERE device_id = ? AND revoked_at IS NULL",
        )
        .bind(device_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((tenant_id,)) = device else {
            return Ok(PublishOutcome::UnknownDevice);
        };
        sqlx::query("DELETE FROM key_packages WHERE device_id = ? AND expires_at <= ?")
            .bind(device_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let have = stock_in(&mut tx, device_id, now).await?.one_time;
        let adding = u64::try_from(one_time.len()).unwrap_or(u64::MAX);
        if have.saturating_add(adding) > max_one_time {
            return Ok(PublishOutcome::StockFull {
                have,
                max: max_one_time,
            });
        }
        if last_resort.is_some() {
            sqlx::query("DELETE FROM key_packages WHERE device_id = ? AND last_resort = 1")
                .bind(device_id)
                .execute(&mut *tx)
                .await?;
        }
        let batch = one_time
            .iter()
            .map(|kp| (kp, false))
            .chain(last_resort.map(|kp| (kp, true)));
        for (kp, is_last_resort) in batch {
            let inserted = sqlx::query(
                "INSERT INTO key_packages \
                 (device_id, tenant_id, kp_ref, data, last_resort, created_at, expires_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(device_id)
            .bind(&tenant_id)
            .bind(&kp.kp_ref)
            .bind(&kp.data)
            .bind(is_last_resort)
            .bind(now)
            .bind(kp.expires_at)
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                // Dropping `tx` rolls back everything this call wrote.
                Err(e) if is_unique_violation(&e) => return Ok(PublishOutcome::Duplicate),
                Err(e) => return Err(e.into()),
            }
        }
        let stock = stock_in(&mut tx, device_id, now).await?;
        tx.commit().await?;
        Ok(PublishOutcome::Stored(stock))
    }

    async fn key_package_stock(
        &self,
        device_id: &str,
        now: i64,
    ) -> Result<KeyPackageStock, StoreError> {
        let mut tx = self.pool.begin().await?;
        let stock = stock_in(&mut tx, device_id, now).await?;
        tx.commit().await?;
        Ok(stock)
    }

    async fn claim_key_packages(
        &self,
        tenant_id: &str,
        user_id: &str,
        exclude_device: Option<&str>,
        now: i64,
    ) -> Result<ClaimOutcome, StoreError> {
        let mut tx = self.writer.begin().await?;
        let devices: Vec<(String,)> = sqlx::query_as(
            "SELECT device_id FROM devices \
             WHERE tenant_id = ? AND user_id = ? AND revoked_at IS NULL \
             ORDER BY created_at, device_id",
        )
        .bind(tenant_id)
        .bind(user_id)
        .fetch_all(&mut *tx)
        .await?;
        let devices: Vec<String> = devices
            .into_iter()
            .map(|(d,)| d)
            .filter(|d| Some(d.as_str()) != exclude_device)
            .collect();
        if devices.is_empty() {
            return Ok(ClaimOutcome::UnknownUser);
        }
        let mut claimed = Vec::with_capacity(devices.len());
        for device_id in devices {
            let one_time: Option<(Vec<u8>,)> = sqlx::query_as(
                "DELETE FROM key_packages WHERE id = (\
                   SELECT id FROM key_packages \
                   WHERE device_id = ? AND last_resort = 0 AND expires_at > ? \
                   ORDER BY id LIMIT 1) \
                 RETURNING data",
            )
            .bind(&device_id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((data,)) = one_time {
                claimed.push(ClaimedKp {
                    device_id,
                    data,
                    last_resort: false,
                });
                continue;
            }
            let fallback: Option<(Vec<u8>,)> = sqlx::query_as(
                "SELECT data FROM key_packages \
                 WHERE device_id = ? AND last_resort = 1 AND expires_at > ?",
            )
            .bind(&device_id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((data,)) = fallback {
                claimed.push(ClaimedKp {
                    device_id,
                    data,
                    last_resort: true,
                });
            }
        }
        tx.commit().await?;
        if claimed.is_empty() {
            Ok(ClaimOutcome::NoKeyPackage)
        } else {
            Ok(ClaimOutcome::Claimed(claimed))
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&mut *self.writer.lock().await)
            .await?;
        Ok(())
    }
}
