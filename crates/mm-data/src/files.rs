//! Sources whose images are files on disk: a CSV/TSV of (image path, caption) rows, as
//! open_clip's `--csv-img-key/--csv-caption-key/--csv-separator` read, and a folder of images
//! with sidecar `.txt` captions. Files are read by the batcher's workers, not here.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::DataError;
use crate::regular_file::open_regular;
use crate::source::{
    Captions, ImageInput, ImageTextPair, Labels, MAX_CAPTION_BYTES, PairSource, SampleError,
    SampleErrorKind,
};

const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

/// The columns and separator of a CSV/TSV dataset (open_clip's defaults: `filepath`, `title`,
/// tab).
#[derive(Clone, Debug, PartialEq)]
pub struct CsvColumns {
    pub image: String,
    pub caption: String,
    /// The class label column, read only where labels are needed (the classify objective).
    pub label: Option<String>,
    pub separator: u8,
}

impl Default for CsvColumns {
    fn default() -> Self {
        Self {
            image: "filepath".into(),
            caption: "title".into(),
            label: None,
            separator: b'\t',
        }
    }
}

/// The separator of CSV/TSV file `path`, the one rule every command follows: `given` if that
/// is one ASCII character (an error otherwise), else `,` for a `.csv` file and tab for
/// anything else (`.tsv`; open_clip's default).
pub fn csv_separator(given: Option<&str>, path: &Path) -> Result<u8, String> {
    match given {
        Some(s) if s.len() == 1 && s.is_ascii() => Ok(s.as_bytes()[0]),
        Some(s) => Err(format!("must be one ASCII character, got {s:?}")),
        None if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv")) =>
        {
            Ok(b',')
        }
        None => Ok(b'\t'),
    }
}

/// Streams the rows of a CSV/TSV file; image paths are relative to the file's directory.
pub struct CsvSource {
    path: PathBuf,
    base: PathBuf,
    reader: csv::Reader<RowCap>,
    /// Bytes read from the file since the last complete row.
    row_bytes: Arc<AtomicU64>,
    /// Set once the file cannot be read further (an I/O error or an endless row).
    ended: bool,
    image_column: usize,
    /// `None`: no caption column, where captions are optional.
    caption_column: Option<usize>,
    captions: Captions,
    /// The label column, where labels are read.
    label_column: Option<usize>,
    record: csv::ByteRecord,
    /// Data row number (1 = first row after the header), for error locations.
    row: usize,
}

impl CsvSource {
    /// Opens `path` and finds the two columns; a missing file or column is an error here, at
    /// start-up, naming what exists.
    pub fn open(path: &Path, columns: &CsvColumns) -> Result<Self, DataError> {
        Self::open_with(path, columns, Captions::Required)
    }

    /// [`CsvSource::open`], with captions `captions`: optional ones need no caption column.
    pub fn open_with(
        path: &Path,
        columns: &CsvColumns,
        captions: Captions,
    ) -> Result<Self, DataError> {
        let file = open_regular(path).map_err(|e| DataError::io(path, e))?;
        let row_bytes = Arc::new(AtomicU64::new(0));
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(columns.separator)
            .flexible(true)
            .from_reader(RowCap {
                file,
                row_bytes: row_bytes.clone(),
            });
        let headers = reader
            .byte_headers()
            .map_err(|e| DataError::Config(format!("{}: reading the header: {e}", path.display())))?
            .clone();
        let names: Vec<String> = headers
            .iter()
            .map(|h| String::from_utf8_lossy(h).trim().to_string())
            .collect();
        let find = |name: &str, key: &str| {
            names.iter().position(|n| n == name).ok_or_else(|| {
                DataError::Config(format!(
                    "{}: no column `{name}` (data.{key}); the header has {names:?}{}",
                    path.display(),
                    if names.len() == 1 {
                        " (wrong csv_separator?)"
                    } else {
                        ""
                    }
                ))
            })
        };
        Ok(Self {
            image_column: find(&columns.image, "csv_img_key")?,
            caption_column: match captions {
                Captions::Required => Some(find(&columns.caption, "csv_caption_key")?),
                Captions::Optional => names.iter().position(|n| *n == columns.caption),
            },
            captions,
            label_column: match &columns.label {
                Some(label) => Some(find(label, "csv_label_key")?),
                None => None,
            },
            base: path.parent().unwrap_or(Path::new("")).to_path_buf(),
            path: path.to_path_buf(),
            reader,
            row_bytes,
            ended: false,
            record: csv::ByteRecord::new(),
            row: 0,
        })
    }
}

/// Bytes one CSV row may take: far beyond a path and a 64 KiB caption. The csv crate reads a
/// row whole, so a file that is one endless line would otherwise be read into memory.
pub const MAX_CSV_ROW_BYTES: u64 = 64 << 20;

/// The CSV file as the csv crate reads it, failing once a row runs past
/// [`MAX_CSV_ROW_BYTES`] (`row_bytes` is reset after every complete row).
struct RowCap {
    file: File,
    row_bytes: Arc<AtomicU64>,
}

impl Read for RowCap {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.row_bytes.load(Ordering::Relaxed) > MAX_CSV_ROW_BYTES {
            return Err(std::io::Error::other(format!(
                "a row longer than {MAX_CSV_ROW_BYTES} bytes"
            )));
        }
        let n = self.file.read(buf)?;
        self.row_bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Iterator for CsvSource {
    type Item = Result<ImageTextPair, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.row += 1;
        let location = format!("{} row {}", self.path.display(), self.row);
        let err =
            |kind, message: String| Some(Err(SampleError::new(kind, location.clone(), message)));
        if self.ended {
            return None;
        }
        match self.reader.read_byte_record(&mut self.record) {
            Ok(false) => return None,
            Ok(true) => self.row_bytes.store(0, Ordering::Relaxed),
            // A row that cannot be read any further: the rest of the file is skipped.
            Err(e) if e.is_io_error() => {
                self.ended = true;
                return err(
                    SampleErrorKind::BadCaption,
                    format!("{e}; rest of the file skipped"),
                );
            }
            // An unreadable row (e.g. an unterminated quote running to the end).
            Err(e) => return err(SampleErrorKind::BadCaption, e.to_string()),
        }
        let field = |i: usize| self.record.get(i).unwrap_or_default();
        let image = field(self.image_column);
        if image.is_empty() {
            return err(SampleErrorKind::MissingImage, "empty image path".into());
        }
        let Ok(image) = std::str::from_utf8(image) else {
            return err(
                SampleErrorKind::MissingImage,
                "image path is not UTF-8".into(),
            );
        };
        let caption = match self.captions.read(self.caption_column.map(field)) {
            Ok(caption) => caption,
            Err((kind, why)) => return err(kind, format!("{image}: {why}")),
        };
        let labels = match self.label_column {
            Some(_) => Labels::Required,
            None => Labels::Ignored,
        };
        let label = match labels.read(self.label_column.map(field)) {
            Ok(label) => label,
            Err((kind, why)) => return err(kind, format!("{image}: {why}")),
        };
        Some(Ok(ImageTextPair {
            image: ImageInput::File(self.base.join(image)),
            caption,
            label,
            location,
        }))
    }
}

impl PairSource for CsvSource {
    fn describe(&self) -> String {
        format!("CSV {}", self.path.display())
    }
}

/// Images under a folder (recursively, in sorted order), each captioned by the `.txt` file
/// with the same stem beside it.
pub struct FolderSource {
    root: PathBuf,
    /// Each image and its caption file (`None`: none, where captions are optional).
    items: std::vec::IntoIter<Result<(PathBuf, Option<PathBuf>), SampleError>>,
    captions: Captions,
    /// Required: each image's label is its top-level folder's name.
    labels: Labels,
}

impl FolderSource {
    pub fn open(root: &Path) -> Result<Self, DataError> {
        Self::open_with(root, Captions::Required)
    }

    /// [`FolderSource::open`], with captions `captions`: optional ones need no `.txt` files.
    pub fn open_with(root: &Path, captions: Captions) -> Result<Self, DataError> {
        if !root.is_dir() {
            return Err(DataError::Config(format!(
                "{}: not a directory",
                root.display()
            )));
        }
        let mut files = Vec::new();
        collect_files(root, &mut files, 0).map_err(|e| DataError::io(root, e))?;
        files.sort();
        let ext = |p: &Path| {
            p.extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default()
        };
        let is_image = |p: &Path| IMAGE_EXTENSIONS.contains(&ext(p).as_str());
        let mut items = Vec::new();
        for file in &files {
            let location = file.display().to_string();
            if is_image(file) {
                let caption = file.with_extension("txt");
                items.push(if caption.is_file() {
                    Ok((file.clone(), Some(caption)))
                } else if captions == Captions::Optional {
                    Ok((file.clone(), None))
                } else {
                    Err(SampleError::new(
                        SampleErrorKind::MissingCaption,
                        location,
                        "no .txt caption beside it",
                    ))
                });
            } else if ext(file) == "txt"
                // Any image beside it, even one that is no regular file (that one is reported
                // for what it is when it is read).
                && !IMAGE_EXTENSIONS.iter().any(|e| {
                    file.with_extension(e).exists()
                        || file.with_extension(e.to_uppercase()).exists()
                })
            {
                items.push(Err(SampleError::new(
                    SampleErrorKind::MissingImage,
                    location,
                    "caption without an image",
                )));
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            items: items.into_iter(),
            captions,
            labels: Labels::Ignored,
        })
    }

    /// This source labelling each image by its top-level folder (`root/CLASS/...`).
    pub fn with_labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }
}

/// Folder nesting followed below the root; deeper trees are an error, not a stack overflow.
const MAX_FOLDER_DEPTH: usize = 64;

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> std::io::Result<()> {
    if depth > MAX_FOLDER_DEPTH {
        return Err(std::io::Error::other(format!(
            "{}: folders nested more than {MAX_FOLDER_DEPTH} deep",
            dir.display()
        )));
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        // Symlinks are not followed into directories, so link loops cannot recurse.
        if entry.file_type()?.is_dir() {
            collect_files(&path, out, depth + 1)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

impl Iterator for FolderSource {
    type Item = Result<ImageTextPair, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.items.next()?.and_then(|(image, caption_path)| {
            let location = image.display().to_string();
            let fail = |kind, message: &str| SampleError::new(kind, location.clone(), message);
            let bytes = match caption_path {
                Some(path) => {
                    let mut bytes = Vec::new();
                    open_regular(&path)
                        .and_then(|file| {
                            file.take(MAX_CAPTION_BYTES as u64).read_to_end(&mut bytes)
                        })
                        .map_err(|e| fail(SampleErrorKind::MissingCaption, &e.to_string()))?;
                    Some(bytes)
                }
                None => None,
            };
            let caption = self
                .captions
                .read(bytes.as_deref())
                .map_err(|(kind, why)| fail(kind, why))?;
            // A class per top-level folder, as torchvision's ImageFolder reads them.
            let relative = image.strip_prefix(&self.root).unwrap_or(&image);
            let class = relative
                .components()
                .next()
                .filter(|_| relative.components().count() > 1)
                .map(|c| c.as_os_str().as_encoded_bytes().to_vec());
            let label = self.labels.read(class.as_deref()).map_err(|(kind, why)| {
                fail(kind, &format!("{why} (not inside a class folder?)"))
            })?;
            Ok(ImageTextPair {
                image: ImageInput::File(image),
                caption,
                label,
                location,
            })
        }))
    }
}

impl PairSource for FolderSource {
    fn describe(&self) -> String {
        format!("image folder {}", self.root.display())
    }
}
