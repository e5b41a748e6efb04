//! applianced: one binary that runs a complete PHP application stack.
//!
//! Data flows one way: [`config`] is parsed, [`plan`] turns it into ordered unit
//! specs, [`provision`] prepares users, dirs and secrets, [`supervisor`] runs the
//! units and emits [`events`], which [`state`] records and [`control`] exposes.

pub mod assets;
pub mod config;
pub mod layout;
pub mod plan;
pub mod process;
pub mod secrets;
pub mod notify;
pub mod readiness;
pub mod logs;
pub mod state;
pub mod provision;
pub mod supervisor;
