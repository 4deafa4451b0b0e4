//! `ternctl inspect zones` on a global control plane: every zone with its
//! sync state, in kumactl's columns.

use crate::client::Client;
use crate::output::{self, Format};
use anyhow::Result;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tern_protocol::ZoneInsightSpec;

const COLUMNS: [&str; 8] = [
    "NAME",
    "STATUS",
    "LAST CONNECTED AGO",
    "LAST UPDATED AGO",
    "TOTAL UPDATES",
    "TOTAL ERRORS",
    "ZONE-CP VERSION",
    "BACKEND",
];

/// Every Zone with its ZoneInsight (if any), by name.
async fn fetch(client: &Client) -> Result<Vec<(Value, Option<Value>)>> {
    let (zones, _) = crate::fetch_all(client, "/zones".into()).await?;
    let (insights, _) = crate::fetch_all(client, "/zone-insights".into()).await?;
    let mut insights: BTreeMap<String, Value> =
        insights.into_iter().map(|i| (i["name"].as_str().unwrap_or("").to_string(), i)).collect();
    Ok(zones
        .into_iter()
        .map(|z| {
            let insight = insights.remove(z["name"].as_str().unwrap_or(""));
            (z, insight)
        })
        .collect())
}

pub async fn zones(client: &Client, format: Format) -> Result<()> {
    let zones = fetch(client).await?;
    if format != Format::Table {
        let items: Vec<Value> = zones.iter().map(|(z, i)| json!({"zone": z, "insight": i})).collect();
        return output::print_value(&json!({"total": items.len(), "items": items}), format);
    }
    if zones.is_empty() {
        eprintln!("No zones found (zones appear when their control plane first connects).");
        return Ok(());
    }
    print!("{}", render(&zones));
    Ok(())
}

/// The table, as text.
pub async fn text(client: &Client) -> Result<String> {
    Ok(render(&fetch(client).await?))
}

fn render(zones: &[(Value, Option<Value>)]) -> String {
    let now = Utc::now();
    let rows: Vec<Vec<String>> = zones
        .iter()
        .map(|(z, insight)| {
            let insight = insight.as_ref().and_then(|i| serde_json::from_value::<ZoneInsightSpec>(i.clone()).ok());
            row(
                z["name"].as_str().unwrap_or(""),
                z["enabled"].as_bool() != Some(false),
                &insight.unwrap_or_default(),
                now,
            )
        })
        .collect();
    output::table(&COLUMNS, &rows)
}

/// One zone's row: Online only while connected and enabled (kumactl's rule).
pub fn row(name: &str, enabled: bool, insight: &ZoneInsightSpec, now: DateTime<Utc>) -> Vec<String> {
    let ago = |t: Option<&str>| {
        t.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| output::age(now - t.with_timezone(&Utc)))
            .unwrap_or_else(|| "never".into())
    };
    let last = insight.subscriptions.last();
    let status = match (insight.is_online(), enabled) {
        (true, true) => "Online",
        (_, false) => "Offline (disabled)",
        (false, true) => "Offline",
    };
    let updates: u64 = insight
        .subscriptions
        .iter()
        .map(|s| s.status.total.responses_sent + s.status.zone_to_global.responses_sent)
        .sum();
    let errors: u64 = insight
        .subscriptions
        .iter()
        .map(|s| s.status.total.responses_rejected + s.status.zone_to_global.responses_rejected)
        .sum();
    vec![
        name.to_string(),
        status.to_string(),
        ago(last.map(|s| s.connect_time.as_str())),
        ago(last.and_then(|s| s.status.last_update_time.as_deref())),
        updates.to_string(),
        errors.to_string(),
        last.map(|s| s.version.clone()).unwrap_or_default(),
        last.map(|s| s.backend.clone()).unwrap_or_default(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::{KdsCounts, KdsStatus, KdsSubscription};

    #[test]
    fn a_connected_zone_is_online_until_it_disconnects() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:01:00Z").unwrap().with_timezone(&Utc);
        let mut insight = ZoneInsightSpec {
            subscriptions: vec![KdsSubscription {
                connect_time: "2026-01-01T00:00:00Z".into(),
                version: "0.1.0".into(),
                backend: "sqlite".into(),
                status: KdsStatus {
                    last_update_time: Some("2026-01-01T00:00:30Z".into()),
                    total: KdsCounts {
                        responses_sent: 5,
                        responses_acknowledged: 4,
                        responses_rejected: 1,
                        bytes: 900,
                    },
                    zone_to_global: KdsCounts { responses_sent: 2, ..Default::default() },
                    ..Default::default()
                },
                ..Default::default()
            }],
            health_check_time: None,
        };
        assert_eq!(
            row("us-east", true, &insight, now),
            ["us-east", "Online", "60s", "30s", "7", "1", "0.1.0", "sqlite"]
        );
        assert_eq!(row("us-east", false, &insight, now)[1], "Offline (disabled)");
        insight.subscriptions[0].disconnect_time = Some("2026-01-01T00:00:50Z".into());
        assert_eq!(row("us-east", true, &insight, now)[1], "Offline");
        assert_eq!(row("x", true, &ZoneInsightSpec::default(), now)[2], "never");
    }
}
