//! Envoy inputs: access logs (`access_log`) → `requests` rows, stats (`stats`) →
//! `stat_samples` rows, the push endpoints (`push`), the admin scraper (`scrape`), the
//! access-log file tailer (`tail`) and the status both report (`sources`).

pub mod access_log;
pub mod push;
pub mod scrape;
pub mod sources;
pub mod stats;
pub mod tail;
