//! Per-request cost of the agent API's access decision: reading a tenant's inboxes, inbox
//! settings and grants from the store ([`AccessIndex::load`], what every `/v1` call does, as
//! there is no cache) and deciding over them, on PostgreSQL and SQLite, for a tenant with
//! 50 managed inboxes and 500 grants (10 per inbox, half of them to teams).
//!
//! `cargo bench -p helpr-dataplane --bench access` (PostgreSQL at `HELPR_BENCH_PG_URL`,
//! default `postgres://postgres@127.0.0.1:5432/postgres`; a fresh database is created and
//! dropped).
#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark has nothing to recover from

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use helpr_dataplane::access::{AccessIndex, Agent};
use helpr_dataplane::ids::TenantId;
use helpr_dataplane::store::{
    ApplyOutcome, ControlMeta, DeletionPolicy, GrantRole, GrantSpec, InboxSpec, NewTenant, PgStore,
    SqliteStore, Store, SubjectKind, TenantSpec, Visibility, now_ms,
};
use sqlx::Connection;

const INBOXES: usize = 50;
const GRANTS_PER_INBOX: usize = 10;

fn meta(name: String) -> ControlMeta {
    ControlMeta {
        namespace: "bench".into(),
        name: name.clone(),
        uid: format!("uid-{name}"),
        generation: 1,
    }
}

async fn populate(store: &dyn Store, tenant: &TenantId) {
    store
        .create_tenant(&NewTenant {
            id: tenant.clone(),
            display_name: "Bench".into(),
        })
        .await
        .unwrap();
    let spec = TenantSpec {
        display_name: "Bench".into(),
        deletion_policy: DeletionPolicy::Retain,
        search_mode: helpr_dataplane::search::Mode::Blind,
    };
    let applied = store
        .apply_tenant(&meta(tenant.to_string()), &spec)
        .await
        .unwrap();
    assert_eq!(applied, ApplyOutcome::Applied);
    for i in 0..INBOXES {
        let visibility = [Visibility::Org, Visibility::Team, Visibility::Restricted][i % 3];
        let spec = InboxSpec {
            tenant: tenant.clone(),
            address: format!("inbox{i}@bench.test"),
            visibility,
            team: (visibility == Visibility::Team).then(|| format!("team{}", i % 7)),
            assignment_limits_visibility: false,
            pubsub_topic: None,
            push_audience: None,
        };
        let applied = store
            .apply_inbox(&meta(format!("inbox{i}")), &spec)
            .await
            .unwrap();
        assert_eq!(applied, ApplyOutcome::Applied);
        for g in 0..GRANTS_PER_INBOX {
            let spec = GrantSpec {
                inbox_name: format!("inbox{i}"),
                subject_kind: if g % 2 == 0 {
                    SubjectKind::Agent
                } else {
                    SubjectKind::Team
                },
                subject_name: format!("subject{}", (i * GRANTS_PER_INBOX + g) % 97),
                role: GrantRole::Reply,
                expires_at_ms: (g % 3 == 0).then(|| now_ms() + 3_600_000),
            };
            let applied = store
                .apply_grant(&meta(format!("grant{i}-{g}")), &spec)
                .await
                .unwrap();
            assert_eq!(applied, ApplyOutcome::Applied);
        }
    }
}

fn bench_backend(c: &mut Criterion, rt: &tokio::runtime::Runtime, store: Arc<dyn Store>) {
    let tenant = TenantId::new("bench").unwrap();
    rt.block_on(populate(store.as_ref(), &tenant));
    let agent = Agent {
        tenant: tenant.clone(),
        name: "subject4".into(),
        teams: ["team3", "subject7"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let backend = store.backend();
    c.bench_function(&format!("access/{backend}/load_and_decide_all"), |b| {
        b.iter(|| {
            rt.block_on(async {
                let index = AccessIndex::load(store.as_ref(), &tenant).await.unwrap();
                index.readable_ids(&agent, now_ms()).len()
            })
        })
    });
    let index = rt
        .block_on(AccessIndex::load(store.as_ref(), &tenant))
        .unwrap();
    // The bench agent reads some inboxes (org ones at least), not all of them.
    let readable = index.readable_ids(&agent, now_ms()).len();
    assert!(readable > 0 && readable < INBOXES, "{readable}");
    c.bench_function(&format!("access/{backend}/decide_all_in_memory"), |b| {
        b.iter(|| index.readable_ids(&agent, now_ms()).len())
    });
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let sqlite: Arc<dyn Store> = Arc::new(rt.block_on(SqliteStore::connect(&url)).unwrap());
    bench_backend(c, &rt, sqlite);

    let admin = std::env::var("HELPR_BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("helpr_bench_{}", uuid::Uuid::new_v4().simple());
    let pg: Arc<dyn Store> = rt.block_on(async {
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        Arc::new(PgStore::connect(&url).await.unwrap())
    });
    bench_backend(c, &rt, pg.clone());
    drop(pg);
    rt.block_on(async {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
            let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut conn)
                .await;
        }
    });
}

criterion_group!(access, benches);
criterion_main!(access);
