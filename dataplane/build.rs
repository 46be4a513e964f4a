//! - Rebuilds the crate when a migration is added or changed (sqlx::migrate! embeds them).
//! - Compiles dataplane/proto with protox (pure Rust: no protoc on the build machine) and
//!   generates the tonic client and server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=migrations");
    let protos = [
        "proto/helpr/index/v1/index.proto",
        "proto/helpr/control/v1/control.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
