//! relay/Dockerfile and operator/Dockerfile build their dependencies in stages written the same
//! in both, so that Docker's builder reuses the first image's dependency layer for the second
//! (e2e/kind/run.sh --dockerfiles). Nothing can include one Dockerfile in another, so this keeps
//! the two copies the same.

const RELAY: &str = include_str!("../../relay/Dockerfile");
const OPERATOR: &str = include_str!("../../operator/Dockerfile");

/// The shared stages: from the toolchain stage to the stage that builds the binary.
fn shared_stages(dockerfile: &str) -> Option<&str> {
    let start = dockerfile.find("FROM rust:1-bookworm AS toolchain")?;
    let end = dockerfile.find("FROM deps AS build")?;
    dockerfile.get(start..end)
}

#[test]
fn both_dockerfiles_share_their_dependency_stages() {
    let relay = shared_stages(RELAY).expect("relay/Dockerfile: toolchain to build stages");
    let operator = shared_stages(OPERATOR).expect("operator/Dockerfile: toolchain to build stages");
    assert_eq!(
        relay, operator,
        "the stages up to `deps` differ between relay/Dockerfile and operator/Dockerfile"
    );
    // Both binaries' dependencies are in the shared layer, each with its own features.
    assert!(
        relay.contains("for p in wpex wpex-operator; do"),
        "the dependency stage does not build both packages"
    );
}
