//! What the demo's tests share: the demo binary as a child process.
#![allow(dead_code)]

pub mod admin;
pub mod demo;
