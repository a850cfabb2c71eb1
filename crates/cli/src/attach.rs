//! The attachment parts of `seal`: sending a file, saving received files into a folder, and
//! progress bars.
//!
//! A received file name comes from another user and is untrusted: only its last path
//! component is used, control characters are dropped, and an existing file is never
//! overwritten (a ` (n)` suffix is added). Files are written under a temporary name and
//! renamed only once the download decrypted and verified. Progress bars appear only when
//! stderr is a terminal. Keys never reach stdout or stderr.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sealgate_client::attachment::Progress;
use sealgate_client::{AttachmentMessage, AttachmentOptions, SealClient};
use serde_json::{Value, json};

/// Attempts at a whole send when the gateway is unreachable or failing (each resumes the
/// upload where the previous one stopped).
const SEND_ATTEMPTS: u32 = 3;

/// A progress bar on stderr, or nothing when stderr is not a terminal.
pub fn progress_bar(label: &str) -> Option<(ProgressBar, Progress)> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = ProgressBar::new(0)
        .with_style(style)
        .with_message(label.to_owned());
    let b = bar.clone();
    let callback: Progress = Arc::new(move |done, total| {
        b.set_length(total);
        b.set_position(done);
    });
    Some((bar, callback))
}

/// A media type from the file extension; `application/octet-stream` when unknown.
pub fn guess_media_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "log" | "md" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp4" => "video/mp4",
        "mp3" => "audio/mpeg",
        _ => "application/octet-stream",
    }
}

/// `seal send --attach FILE`: send, retrying (and so resuming) on transient failures.
pub async fn send(
    client: &mut SealClient,
    to: Option<String>,
    conversation: Option<String>,
    file: &Path,
    name: Option<String>,
    media_type: Option<String>,
    text: Option<String>,
) -> Result<Value> {
    let name = name.unwrap_or_else(|| {
        file.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "attachment".to_owned())
    });
    let media_type = media_type.unwrap_or_else(|| guess_media_type(file).to_owned());
    let bar = progress_bar("upload");
    let mut options = AttachmentOptions::new(name, media_type);
    options.text = text;
    options.progress = bar.as_ref().map(|(_, p)| p.clone());
    let mut attempt = 1;
    let receipt = loop {
        let result = match (&to, &conversation) {
            (Some(user), _) => {
                client
                    .send_attachment_file_to_user(user, file, options.clone())
                    .await
            }
            (None, Some(c)) => client.send_attachment_file(c, file, options.clone()).await,
            (None, None) => anyhow::bail!("give --to USER or --conversation ID"),
        };
        match result {
            Ok(r) => break r,
            Err(e) if e.is_transient() && attempt < SEND_ATTEMPTS => {
                tracing::debug!(attempt, error = %e, "send failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    };
    if let Some((bar, _)) = bar {
        bar.finish_and_clear();
    }
    Ok(json!({
        "conversation": receipt.conversation,
        "message_id": receipt.message_id,
        "attachment_id": receipt.attachment_id,
        "size": receipt.size,
        "digest": receipt.digest,
        "resumed_from": receipt.resumed_from,
    }))
}

/// The event line for an attachment that is listed but not saved (no key material).
pub fn listed(a: &AttachmentMessage) -> Value {
    let mut v = json!({
        "conversation": a.conversation,
        "from": a.from,
        "device": a.device,
        "attachment": {
            "attachment_id": a.attachment.attachment_id,
            "name": a.attachment.name,
            "size": a.attachment.size,
            "media_type": a.attachment.media_type,
            "digest": a.attachment.digest,
        },
        "sent_at": a.sent_at,
    });
    if let Some(text) = &a.text {
        v["text"] = json!(text);
    }
    v
}

/// Download, verify and save an attachment into `dir`. The event line says where it went, or
/// why it could not be saved (`attachment.error`); the bool is whether it was saved.
pub async fn save(client: &SealClient, dir: &Path, a: &AttachmentMessage) -> (Value, bool) {
    let mut v = json!({
        "conversation": a.conversation,
        "from": a.from,
        "attachment": {
            "name": a.attachment.name,
            "size": a.attachment.size,
            "digest": a.attachment.digest,
        },
    });
    if let Some(text) = &a.text {
        v["text"] = json!(text);
    }
    let ok = match download_into(client, dir, a).await {
        Ok(path) => {
            v["attachment"]["path"] = json!(path);
            true
        }
        Err(e) => {
            v["attachment"]["error"] = json!(format!("{e:#}"));
            false
        }
    };
    (v, ok)
}

async fn download_into(client: &SealClient, dir: &Path, a: &AttachmentMessage) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = safe_file_name(&a.attachment.name);
    let (target, _reserved) = reserve(dir, &name)?;
    let temp = dir.join(format!(".{name}.{}.part", a.attachment.attachment_id));
    let result = async {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .with_context(|| format!("creating {}", temp.display()))?;
        let bar = progress_bar("download");
        let verified = client
            .download_attachment(&a.attachment, &mut file, bar.as_ref().map(|(_, p)| p))
            .await?;
        if let Some((bar, _)) = bar {
            bar.finish_and_clear();
        }
        file.sync_all()?;
        std::fs::rename(&temp, &target)
            .with_context(|| format!("renaming to {}", target.display()))?;
        Ok::<_, anyhow::Error>(verified)
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        let _ = std::fs::remove_file(&target);
        return Err(e);
    }
    Ok(target)
}

/// The last path component of an untrusted name, without control characters or leading
/// dots; `attachment` when nothing usable is left.
pub fn safe_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last.chars().filter(|c| !c.is_control()).collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    let mut out: String = cleaned.chars().take(200).collect();
    if out.is_empty() {
        out = "attachment".to_owned();
    }
    out
}

/// Create `dir/name`, or `dir/stem (n).ext` if taken, so nothing is ever overwritten.
fn reserve(dir: &Path, name: &str) -> Result<(PathBuf, std::fs::File)> {
    let path = Path::new(name);
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_owned());
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    for n in 0..10_000 {
        let candidate = if n == 0 {
            dir.join(name)
        } else {
            dir.join(format!("{stem} ({n}){ext}"))
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(f) => return Ok((candidate, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", candidate.display())),
        }
    }
    anyhow::bail!("no free file name for {name:?} in {}", dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_names_lose_their_paths() {
        assert_eq!(safe_file_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_file_name("C:\\Users\\x\\report.pdf"), "report.pdf");
        assert_eq!(safe_file_name(".bashrc"), "bashrc");
        assert_eq!(safe_file_name(".."), "attachment");
        assert_eq!(safe_file_name("a/b/"), "attachment");
        assert_eq!(safe_file_name("evil\u{1b}[31m.txt"), "evil[31m.txt");
        assert_eq!(safe_file_name(""), "attachment");
    }

    #[test]
    fn existing_files_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"mine").unwrap();
        let (p1, _) = reserve(dir.path(), "a.txt").unwrap();
        let (p2, _) = reserve(dir.path(), "a.txt").unwrap();
        assert_eq!(p1, dir.path().join("a (1).txt"));
        assert_eq!(p2, dir.path().join("a (2).txt"));
        assert_eq!(std::fs::read(dir.path().join("a.txt")).unwrap(), b"mine");
        assert_eq!(guess_media_type(Path::new("x.PDF")), "application/pdf");
        assert_eq!(guess_media_type(Path::new("x")), "application/octet-stream");
    }
}
