//! `meshscope bench storage`: figures for the storage engine.
pub async fn storage(_spans: usize, _writers: usize, _batch: usize, _dir: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}
