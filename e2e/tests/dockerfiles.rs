//! relay/Dockerfile and operator/Dockerfile build both binaries in stages written the same in
//! both, so that Docker's builder reuses the first image's dependency layer and build for the
//! second (e2e/kind/run.sh --dockerfiles). Nothing can include one Dockerfile in another, so this
//! keeps the two copies the same.

const RELAY: &str = include_str!("../../relay/Dockerfile");
const OPERATOR: &str = include_str!("../../operator/Dockerfile");

/// The shared stages: from the toolchain stage to the final, image-specific one.
fn shared_stages(dockerfile: &str) -> Option<&str> {
    let start = dockerfile.find("FROM rust:1-bookworm AS toolchain")?;
    let end = dockerfile.find("FROM scratch")?;
    dockerfile.get(start..end)
}

/// The `RUN` lines of one stage.
fn stage_runs<'a>(stages: &'a str, name: &str) -> Vec<&'a str> {
    let Some(start) = stages.find(&format!(" AS {name}\n")) else {
        return Vec::new();
    };
    let stage = &stages[start..];
    let stage = stage[1..]
        .find("\nFROM ")
        .map_or(stage, |end| &stage[..=end]);
    stage
        .lines()
        .filter(|line| line.starts_with("RUN ") || line.starts_with(" && "))
        .collect()
}

#[test]
fn both_dockerfiles_share_their_build_stages() {
    let relay = shared_stages(RELAY).expect("relay/Dockerfile: toolchain to final stages");
    let operator = shared_stages(OPERATOR).expect("operator/Dockerfile: toolchain to final stages");
    assert_eq!(
        relay, operator,
        "the stages before `FROM scratch` differ between relay/Dockerfile and operator/Dockerfile"
    );
    // One cargo invocation for both packages in the dependency layer and in the build, so both
    // have the same features: the build then recompiles no dependency.
    let both = "cargo build --release --locked -p wpex -p wpex-operator";
    for stage in ["deps", "build"] {
        let runs = stage_runs(relay, stage);
        assert!(
            runs.iter().any(|line| line.contains(both)),
            "the `{stage}` stage does not build both packages in one invocation: {runs:?}"
        );
    }
}
