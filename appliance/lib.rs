//! applianced: one binary that runs a complete PHP application stack.
//!
//! Data flows one way: [`config`] is parsed, [`plan`] turns it into ordered unit
//! specs, [`provision`] prepares users, dirs and secrets, [`supervisor`] runs the
//! units and emits events ([`state::Event`]), which [`state`] records and [`control`] exposes.
//! [`scheduler`] fires each instance's cron entries as one-shot runs;
//! [`backup`] backs instances up, verifies and restores them.

pub mod admin;
pub mod aof;
pub mod assets;
pub mod backup;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod front;
pub mod init;
pub mod layout;
pub mod lifecycle;
pub mod logs;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod process;
pub mod provision;
pub mod readiness;
pub mod retire;
pub mod scheduler;
pub mod secrets;
pub mod state;
pub mod supervisor;
