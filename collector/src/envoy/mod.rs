//! Envoy inputs: access logs (`access_log`) → `requests` rows, stats (`stats`) →
//! `stat_samples` rows, the push endpoints (`push`), the admin scraper (`scrape`) and the
//! access-log file tailer (`tail`).

pub mod access_log;
pub mod push;
pub mod scrape;
pub mod stats;
pub mod tail;
