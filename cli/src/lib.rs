//! What of the command line other programs use too: the embedded local cluster behind
//! `shardfs local`, which the test suite also runs in-process.

pub mod local;
