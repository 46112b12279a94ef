//! WebDataset tar shards (plain or gzip), as img2dataset writes them: `{key}.jpg|png|webp` +
//! `{key}.txt` (+ `{key}.json`), members of one sample adjacent. Streamed with the `tar` crate: nothing is
//! unpacked to disk, so member paths are only ever names (and unsafe ones are refused anyway).

use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};

use crate::DataError;
use crate::preprocess::ImageLimits;
use crate::regular_file::open_regular;
use crate::source::{
    Captions, ImageInput, ImageTextPair, Labels, MAX_CAPTION_BYTES, MAX_LABEL_BYTES, PairSource,
    SampleError, SampleErrorKind,
};

/// Image extensions, in the order a sample's image is preferred.
const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "webp", "bmp", "gif"];
const CAPTION_EXTENSIONS: [&str; 2] = ["txt", "caption"];

/// Expands shard patterns to files: brace ranges and lists (`data/{00000..00127}.tar`,
/// `{a,b}.tar`, as Python's braceexpand) and globs (`data/*.tar`). Every resulting path must
/// exist: a missing shard is a start-up error, not a silently smaller dataset.
pub fn expand_shards(patterns: &[String]) -> Result<Vec<PathBuf>, DataError> {
    let mut shards = Vec::new();
    for pattern in patterns {
        for expanded in expand_braces(pattern).map_err(DataError::Config)? {
            if expanded.contains(['*', '?', '[']) {
                let mut matches: Vec<PathBuf> = glob::glob(&expanded)
                    .map_err(|e| DataError::Config(format!("shard pattern {expanded:?}: {e}")))?
                    .filter_map(Result::ok)
                    .collect();
                if matches.is_empty() {
                    return Err(DataError::Config(format!(
                        "shard pattern {expanded:?} matches no files"
                    )));
                }
                matches.sort();
                shards.extend(matches);
            } else {
                let path = PathBuf::from(&expanded);
                match std::fs::metadata(&path) {
                    Ok(meta) if meta.is_file() => shards.push(path),
                    // Opened (without blocking) only to say what it is.
                    Ok(_) => {
                        let why = open_regular(&path).err().map(|e| e.to_string());
                        let why = why.unwrap_or_else(|| "not a regular file".into());
                        return Err(DataError::Config(format!("shard {expanded}: {why}")));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(DataError::Config(format!("shard {expanded}: no such file")));
                    }
                    Err(e) => return Err(DataError::Config(format!("shard {expanded}: {e}"))),
                }
            }
        }
    }
    if shards.is_empty() {
        return Err(DataError::Config("no shards given".into()));
    }
    Ok(shards)
}

/// Shard paths one pattern may expand to (LAION-5B is ~230,000 shards).
pub const MAX_SHARDS: usize = 1_000_000;

/// Brace expansion: `{00..03}` (zero-padded to the width of the bounds), `{a,b,c}`, nested
/// and repeated. More than [`MAX_SHARDS`] results is an error, found before they are made.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    expand_into(pattern, pattern, &mut out)?;
    Ok(out)
}

fn expand_into(pattern: &str, original: &str, out: &mut Vec<String>) -> Result<(), String> {
    let too_many = || format!("shard pattern {original:?} expands to more than {MAX_SHARDS} paths");
    let Some(open) = pattern.find('{') else {
        if out.len() >= MAX_SHARDS {
            return Err(too_many());
        }
        out.push(pattern.to_string());
        return Ok(());
    };
    // The matching close brace of the first open one.
    let mut depth = 0;
    let mut close = None;
    for (i, c) in pattern[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(open + i);
                    break;
                }
            }
            _ => {}
        }
    }
    let close = close.ok_or_else(|| format!("shard pattern {pattern:?}: unbalanced `{{`"))?;
    let (head, body, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let alternatives: Vec<String> = if let Some((a, b)) = body.split_once("..")
        && !body.contains(',')
    {
        let (start, end) = (a.parse::<u64>(), b.parse::<u64>());
        let (Ok(start), Ok(end)) = (start, end) else {
            return Err(format!("shard pattern {pattern:?}: bad range {{{body}}}"));
        };
        if end < start {
            return Err(format!("shard pattern {pattern:?}: empty range {{{body}}}"));
        }
        if end - start >= MAX_SHARDS as u64 {
            return Err(too_many());
        }
        let width = if a.starts_with('0') && a.len() > 1 {
            a.len()
        } else {
            0
        };
        (start..=end).map(|n| format!("{n:0width$}")).collect()
    } else {
        split_top_level(body)
    };
    for alternative in alternatives {
        expand_into(&format!("{head}{alternative}{tail}"), original, out)?;
    }
    Ok(())
}

/// `a,{b,c},d` -> [`a`, `{b,c}`, `d`].
fn split_top_level(body: &str) -> Vec<String> {
    let (mut parts, mut current, mut depth) = (Vec::new(), String::new(), 0);
    for c in body.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
}

/// Shards `rank` of `world_size` reads: every `world_size`-th, so ranks see disjoint data.
pub fn shards_for_rank(shards: &[PathBuf], rank: usize, world_size: usize) -> Vec<PathBuf> {
    shards
        .iter()
        .skip(rank)
        .step_by(world_size.max(1))
        .cloned()
        .collect()
}

/// WebDataset's key/extension split: the key is the member path up to the first `.` of its
/// file name, the extension everything after it (`a/b.c.jpg` -> `a/b`, `c.jpg`).
fn split_key(name: &str) -> (&str, &str) {
    let base_start = name.rfind('/').map_or(0, |i| i + 1);
    match name[base_start..].find('.') {
        Some(dot) => (&name[..base_start + dot], &name[base_start + dot + 1..]),
        None => (name, ""),
    }
}

/// One sample's members as read so far.
#[derive(Default)]
struct Members {
    key: String,
    /// The image's bytes, or why they were not read.
    image: Option<Result<Vec<u8>, String>>,
    caption: Option<Vec<u8>>,
    label: Option<Vec<u8>>,
}

/// Samples in flight between the shard-reading thread and the consumer.
const READ_AHEAD: usize = 64;

/// Streams the samples of a list of shards, in order. A background thread reads the tar
/// files (sequential I/O overlapping with decoding and training) and hands over samples in
/// order through a bounded channel; dropping the source stops it.
pub struct TarSource {
    receiver: Receiver<Result<ImageTextPair, SampleError>>,
    description: String,
}

impl TarSource {
    /// Streams `shards` (plain or gzip-compressed tar); image members larger than
    /// `limits.max_bytes` are skipped unread and counted.
    pub fn new(shards: Vec<PathBuf>, limits: ImageLimits) -> Self {
        Self::with_captions(shards, limits, Captions::Required)
    }

    /// [`TarSource::new`], with captions `captions`.
    pub fn with_captions(shards: Vec<PathBuf>, limits: ImageLimits, captions: Captions) -> Self {
        Self::reading(shards, limits, (captions, Labels::Ignored))
    }

    /// [`TarSource::new`], with captions `captions` and labels `labels` (a sample's label is
    /// its `.cls` member, as WebDataset classification shards carry it).
    pub fn reading(
        shards: Vec<PathBuf>,
        limits: ImageLimits,
        (captions, labels): (Captions, Labels),
    ) -> Self {
        let description = format!("{} WebDataset shard(s)", shards.len());
        let (sender, receiver) = sync_channel(READ_AHEAD);
        std::thread::spawn(move || {
            for shard in shards {
                let keep_going = read_shard(&shard, limits, (captions, labels), &mut |item| {
                    sender.send(item).is_ok()
                });
                if !keep_going {
                    return; // The consumer hung up.
                }
            }
        });
        Self {
            receiver,
            description,
        }
    }
}

impl Iterator for TarSource {
    type Item = Result<ImageTextPair, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.receiver.recv().ok()
    }
}

impl PairSource for TarSource {
    fn describe(&self) -> String {
        self.description.clone()
    }
}

type Emit<'a> = dyn FnMut(Result<ImageTextPair, SampleError>) -> bool + 'a;

/// Reads one shard, emitting samples and skipped-sample errors in order. An error mid-shard
/// ends this shard only. Returns false when `emit` asked to stop.
fn read_shard(
    path: &Path,
    limits: ImageLimits,
    needs: (Captions, Labels),
    emit: &mut Emit,
) -> bool {
    let shard = path.display().to_string();
    let bad_shard = |message: String| {
        Err(SampleError::new(
            SampleErrorKind::BadShard,
            shard.clone(),
            format!("truncated or corrupt tar ({message}); rest of the shard skipped"),
        ))
    };
    let file = match open_regular(path) {
        Ok(file) => file,
        Err(e) => return emit(bad_shard(e.to_string())),
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    // WebDataset reads `.tar.gz` shards too; the gzip magic decides, not the name.
    let gzip = match reader.fill_buf() {
        Ok(head) => head.starts_with(&[0x1f, 0x8b]),
        Err(e) => return emit(bad_shard(e.to_string())),
    };
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut archive = tar::Archive::new(reader);
    let entries = match archive.entries() {
        Ok(entries) => entries,
        Err(e) => return emit(bad_shard(e.to_string())),
    };
    let mut pending = Members::default();
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                // An oversized member skipped just before is counted too, not lost with the shard.
                if let Some(Err(too_large)) = pending.image.take() {
                    let location = format!("{shard}:{}", pending.key);
                    let error =
                        SampleError::new(SampleErrorKind::ImageTooLarge, location, too_large);
                    if !emit(Err(error)) {
                        return false;
                    }
                }
                return emit(bad_shard(e.to_string()));
            }
        };
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        let unsafe_path = Path::new(&name)
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        if unsafe_path || kind.is_symlink() || kind.is_hard_link() {
            let what = if unsafe_path {
                "absolute or `..` path"
            } else {
                "link"
            };
            let error = SampleError::new(
                SampleErrorKind::UnsafePath,
                format!("{shard}:{name}"),
                format!("{what}: member skipped"),
            );
            if !emit(Err(error)) {
                return false;
            }
            continue;
        }
        let (key, ext) = split_key(&name);
        let ext = ext.to_ascii_lowercase();
        if key != pending.key {
            let done = std::mem::take(&mut pending);
            if let Some(item) = done.into_sample(&shard, needs)
                && !emit(item)
            {
                return false;
            }
            pending.key = key.to_string();
        }
        let is_image = IMAGE_EXTENSIONS.contains(&ext.as_str());
        let is_caption = CAPTION_EXTENSIONS.contains(&ext.as_str());
        let is_label = ext == "cls" && needs.1 == Labels::Required;
        if !(is_image && pending.image.is_none()
            || is_caption && pending.caption.is_none()
            || is_label && pending.label.is_none())
        {
            continue; // .json and other extras are not read.
        }
        let declared = entry.size();
        let cap = if is_image {
            limits.max_bytes
        } else if is_label {
            MAX_LABEL_BYTES as u64 + 1 // one more: an over-long label is seen as one
        } else {
            MAX_CAPTION_BYTES as u64
        };
        if is_image && declared > cap {
            // Skipped unread; the archive seeks past it (or finds the shard cut short).
            pending.image = Some(Err(format!(
                "tar member {name} declares {declared} bytes, over data.max_image_bytes ({cap})"
            )));
            continue;
        }
        let mut bytes = Vec::with_capacity(declared.min(cap) as usize);
        if let Err(e) = (&mut entry).take(cap).read_to_end(&mut bytes) {
            return emit(bad_shard(format!("reading {name}: {e}")));
        }
        if (bytes.len() as u64) < declared.min(cap) {
            return emit(bad_shard(format!(
                "{name} declares {declared} bytes but the shard ends after {}",
                bytes.len()
            )));
        }
        if is_image {
            pending.image = Some(Ok(bytes));
        } else if is_label {
            pending.label = Some(bytes);
        } else {
            pending.caption = Some(bytes);
        }
    }
    match pending.into_sample(&shard, needs) {
        Some(item) => emit(item),
        None => true,
    }
}

impl Members {
    /// The completed member group as a sample, or the reason it is not one.
    fn into_sample(
        self,
        shard: &str,
        (captions, labels): (Captions, Labels),
    ) -> Option<Result<ImageTextPair, SampleError>> {
        if self.key.is_empty() {
            return None;
        }
        let location = format!("{shard}:{}", self.key);
        let err = |kind, message: &str| Some(Err(SampleError::new(kind, &location, message)));
        match (self.image, self.caption) {
            (None, None) => None, // e.g. only a .json: not a sample.
            (None, Some(_)) => err(SampleErrorKind::MissingImage, "caption without an image"),
            (Some(Err(too_large)), _) => err(SampleErrorKind::ImageTooLarge, &too_large),
            (Some(Ok(image)), caption) => match captions.read(caption.as_deref()) {
                Err((kind, why)) => err(kind, why),
                Ok(caption) => match labels.read(self.label.as_deref()) {
                    Err((kind, why)) => err(kind, &format!("{why} (no .cls member?)")),
                    Ok(label) => Some(Ok(ImageTextPair {
                        image: ImageInput::Encoded(image),
                        caption,
                        label,
                        location,
                    })),
                },
            },
        }
    }
}
