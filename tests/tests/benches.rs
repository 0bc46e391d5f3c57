//! Every benchmark `cargo xtask bench` offers runs to its end, briefly: a
//! benchmark that no longer builds its world, refuses what its filters
//! should refuse, or reads its figures is found here rather than on the
//! day someone measures. Timing is not judged: the figures of a few
//! rounds mean nothing, and timing belongs to the benchmarks themselves.

use std::process::Command;

use egret_tests::{agent::Cli, privileged};

/// Runs `egret-lab COMMAND` (its words split on spaces), which must
/// succeed; returns what it printed.
fn lab(command: &str) -> String {
    let args: Vec<&str> = command.split_whitespace().collect();
    let out = Cli::from(
        Command::new(egret_tests::workspace_bin("egret-lab"))
            .args(&args)
            .output()
            .expect("running egret-lab"),
    );
    let text = out.stdout + &out.stderr;
    assert_eq!(out.code, 0, "egret-lab {args:?} failed:\n{text}");
    text
}

fn assert_says(text: &str, what: &[&str]) {
    for line in what {
        assert!(text.contains(line), "expected {line:?} in:\n{text}");
    }
}

#[test]
fn the_connect_benchmark_compares_every_filter_after_proving_each_refuses() {
    if !privileged("the_connect_benchmark_compares_every_filter_after_proving_each_refuses") {
        return;
    }
    // The benchmark asserts, before measuring, that egret answers the
    // attacker with EPERM and both nftables rulesets with a reject, while
    // the bare job reaches it.
    let text = lab("bench-connect --runs 2 --rounds 8 --connects 5");
    assert_says(
        &text,
        &[
            "calibration, every host unfiltered",
            "run 2: wall egret",
            "    egret ",
            "    nftables ",
            "    nft stateless ",
            "    empty programs ",
        ],
    );
}

#[test]
fn the_other_benchmarks_run_to_their_end() {
    if !privileged("the_other_benchmarks_run_to_their_end") {
        return;
    }
    let hooks = lab("bench-hooks --connects 1000 --datagrams 1000 --megabytes 2");
    assert_says(&hooks, &["egret_connect4", "egret_egress", "total"]);
    let lockdown = lab("bench-lockdown --runs 2");
    assert_says(
        &lockdown,
        &["held connections ended with ECONNABORTED: 2 of 2"],
    );
    let reload = lab("bench-reload --runs 1");
    assert_says(&reload, &["a one-line edit to the generated preset"]);
    let stream = lab("bench-stream --rounds 1 --megabytes 10");
    assert_says(&stream, &["with egret (backstop on)"]);
    let dns = lab("bench-dns --ms 300 --rounds 1 --clients 2 --rate 500");
    assert_says(&dns, &["egret DNS proxy", "proxy / dnsmasq"]);
}
