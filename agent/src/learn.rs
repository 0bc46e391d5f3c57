//! Learn mode: from a recording of what a runner's jobs did (the agent's
//! `--events-file`, or `egret events --json`), the allow list they need
//! (`egret suggest`), and whether a candidate policy would break them
//! (`egret replay`).

pub mod recording;
pub mod replay;
pub mod suggest;

#[cfg(test)]
mod tests;
