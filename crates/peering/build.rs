//! Compiles the peering .proto with protox (no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/meshpeer/peering/v1/peering.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
