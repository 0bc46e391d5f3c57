//! What a job sends the DNS proxy: any bytes, over UDP or TCP.
#![no_main]

use egret::{
    dnsproxy::{Examined, examine, tcp_frame},
    policy::HostRule,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|query: &[u8]| {
    let rules = [
        HostRule {
            name: "gitlab.test".into(),
            ports: vec![],
            private_answers: false,
        },
        HostRule {
            name: "*.pkg.test".into(),
            ports: vec![],
            private_answers: false,
        },
    ];
    match examine(query) {
        Examined::Drop => {}
        Examined::Reply(reply) => {
            // Every reply the proxy makes must frame over TCP.
            assert!(tcp_frame(reply).is_some());
        }
        Examined::Query { request, asked } => {
            assert_eq!(request.queries.len(), 1);
            let name = asked.to_ascii_lowercase();
            for rule in &rules {
                let _ = rule.matches(&name);
            }
        }
    }
    // Whatever comes back from upstream is framed or refused, never cut.
    if let Some(framed) = tcp_frame(query.to_vec()) {
        let len = usize::from(u16::from_be_bytes([framed[0], framed[1]]));
        assert_eq!(len, framed.len() - 2);
    }
});
