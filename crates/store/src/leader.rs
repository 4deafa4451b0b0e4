//! Leader election among replicas on one PostgreSQL database (Kuma runs
//! its singleton work under a lock in the database too). The leader holds a
//! session-level advisory lock on its own connection and checks that
//! connection every second. When the leader dies its connection closes and
//! PostgreSQL releases the lock at once; a replica that cannot reach the
//! database steps down at once; the server side drops a silent leader's
//! session within about 8 s (TCP keepalives set on the session). Every other
//! replica retries the lock every second.

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// The advisory lock of the leader ("tern" + 1).
const LEADER_LOCK: i64 = 0x7465_726f;
/// How often the leader checks its connection and others retry the lock.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Competes for leadership on the database at `url`, telling `leader` whether
/// this replica leads. Returns only when nobody listens any more.
pub async fn elect(url: &str, leader: watch::Sender<bool>) {
    let mut failing = false;
    while !leader.is_closed() {
        match lead_while_possible(url, &leader).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                warn!(error = %e, "leader election cannot reach the database; retrying");
                failing = true;
            }
            Err(_) => {}
        }
        if *leader.borrow() {
            info!("leadership lost");
            leader.send_replace(false);
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// One connection's life: take the lock when free, hold it while the
/// connection answers.
async fn lead_while_possible(url: &str, leader: &watch::Sender<bool>) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect(url).await?;
    // Let the server drop this session (and the lock) soon after we go silent.
    sqlx::query("SET tcp_keepalives_idle = 3").execute(&mut conn).await?;
    sqlx::query("SET tcp_keepalives_interval = 1").execute(&mut conn).await?;
    sqlx::query("SET tcp_keepalives_count = 3").execute(&mut conn).await?;
    loop {
        let row =
            sqlx::query("SELECT pg_try_advisory_lock($1) AS locked").bind(LEADER_LOCK).fetch_one(&mut conn).await?;
        if row.try_get::<bool, _>("locked")? {
            break;
        }
        if leader.is_closed() {
            return Ok(());
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
    info!("this replica leads (status writes, insight clean-up)");
    leader.send_replace(true);
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let alive = tokio::time::timeout(HEARTBEAT * 2, sqlx::query("SELECT 1").execute(&mut conn)).await;
        match alive {
            Ok(Ok(_)) if !leader.is_closed() => {}
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(sqlx::Error::PoolTimedOut),
        }
    }
}
