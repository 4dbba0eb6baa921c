//! End-to-end import per method into fixtures/businesses.sql's table (6 indexes), through
//! the library exactly as `importer run` drives it. Needs a server: runs when DATABASE_URL
//! is set and says that it skipped otherwise. Each method writes into its own schema, which
//! is dropped at the end. `DATABASE_URL=... cargo bench --bench import`
#![allow(clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use importer::cli::GenerateArgs;
use importer::import::load::run_job;
use importer::import::prepare::{build_job, prepare};
use importer::import::{ImportControl, ImportOptions, Method};
use importer::rejects::RejectLog;
use sqlx::Executor;
use tokio_util::sync::CancellationToken;

/// Rows per import: large enough to show each method's per-row cost, small enough that
/// sequential finishes ten samples in reasonable time.
const ROW_COUNT: u64 = 2_000;

fn benches(criterion: &mut Criterion) {
    let Ok(database_url) = std::env::var("DATABASE_URL") else {
        eprintln!("import bench skipped: DATABASE_URL is not set (see README.md, Tests)");
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("bench runtime starts");
    let directory =
        std::env::temp_dir().join(format!("importer-import-bench-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("bench directory is created");
    let workbook = directory.join("businesses.xlsx");
    importer::cmd::generate::run(&GenerateArgs {
        rows: ROW_COUNT,
        seed: 3,
        bad_rows: 0.0,
        inline_strings: false,
        out: workbook.clone(),
    })
    .expect("bench workbook is generated");
    let schema_sql = include_str!("../fixtures/businesses.sql");
    let schema = format!("importer_bench_{}", std::process::id());
    let admin = runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&database_url)
            .await
            .expect("DATABASE_URL is reachable");
        let mut connection = pool.acquire().await.expect("a connection");
        let setup =
            format!("CREATE SCHEMA \"{schema}\"; SET search_path TO \"{schema}\"; {schema_sql}");
        connection
            .execute(setup.as_str())
            .await
            .expect("bench schema is created");
        pool
    });

    let mut group = criterion.benchmark_group("import");
    group.throughput(Throughput::Elements(ROW_COUNT));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for method in Method::ALL {
        let options = ImportOptions {
            table: Some(format!("{schema}.businesses")),
            create_table: false,
            ..ImportOptions::new(workbook.clone(), database_url.clone())
        };
        group.bench_function(method.name(), |bencher| {
            bencher.iter_custom(|iterations| {
                runtime.block_on(async {
                    let prepared = prepare(&options).await.expect("bench import is prepared");
                    let table = prepared.existing.clone().expect("bench table exists");
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iterations {
                        let truncate = format!("TRUNCATE \"{schema}\".businesses");
                        admin.execute(truncate.as_str()).await.expect("truncate");
                        let cancel = CancellationToken::new();
                        let rejects = Arc::new(
                            RejectLog::create(None, &prepared.header, None, cancel.clone())
                                .expect("rejects log"),
                        );
                        let job =
                            build_job(&prepared, table.clone(), method, 1000, rejects, cancel)
                                .expect("bench job");
                        let started = Instant::now();
                        let control = ImportControl::new();
                        let (report, _) = run_job(method, job, false, &control).await;
                        elapsed += started.elapsed();
                        assert!(report.error.is_none(), "bench import failed");
                        assert_eq!(report.tally.success_count, ROW_COUNT);
                    }
                    elapsed
                })
            })
        });
    }
    group.finish();
    runtime.block_on(async {
        let drop = format!("DROP SCHEMA \"{schema}\" CASCADE");
        admin
            .execute(drop.as_str())
            .await
            .expect("bench schema is dropped");
    });
    std::fs::remove_dir_all(&directory).ok();
}

criterion_group!(import_benches, benches);
criterion_main!(import_benches);
