//! The checked-in generated code must match what tonic-build makes of the
//! .proto file today.
use std::path::Path;

#[test]
fn generated_code_is_fresh() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("tern-proto-gen-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path().unwrap());
    tonic_build::configure()
        .build_transport(false)
        // Shared items (see src/shared.rs).
        .extern_path(".tern.v1.ProxyConfig", "crate::shared::ProxyConfig")
        // Small per-stream buffers (see src/codec.rs).
        .codec_path("crate::codec::LeanCodec")
        .out_dir(&out)
        .compile_protos(&[root.join("proto/tern.proto")], &[root.join("proto")])
        .expect("compile tern.proto");
    // OTLP traces: a client only, the default codec.
    tonic_build::configure()
        .build_transport(false)
        .build_server(false)
        .out_dir(&out)
        .compile_protos(&[root.join("proto/otlp.proto")], &[root.join("proto")])
        .expect("compile otlp.proto");
    for file in ["tern.v1.rs", "opentelemetry.proto.collector.trace.v1.rs"] {
        let fresh = std::fs::read_to_string(out.join(file)).unwrap();
        let committed_path = root.join("src/gen").join(file);
        let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
        if std::env::var_os("TERN_REGEN").is_some() {
            std::fs::write(&committed_path, &fresh).unwrap();
            continue;
        }
        assert!(
            fresh == committed,
            "proto/src/gen/{file} is stale: run `TERN_REGEN=1 cargo test -p proto --test generated`"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}
