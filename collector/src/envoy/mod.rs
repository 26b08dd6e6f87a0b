//! Envoy inputs: access logs (`access_log`) → `requests` rows, stats (`stats`) →
//! `stat_samples` rows, the push endpoints (`push`) and the admin scraper (`scrape`).

pub mod access_log;
pub mod push;
pub mod scrape;
pub mod stats;
