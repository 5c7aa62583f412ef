//! `analytics import FILE`: bulk import of NDJSON or CSV files through the
//! real ingest pipeline, in process.
//!
//! Formats:
//! - **NDJSON**: one event per line, in the wire form of
//!   `POST /api/v1/events`. Blank lines are skipped.
//! - **CSV** with a header row naming any of the columns `id`,
//!   `event_type` (required), `user_id`, `session_id`, `timestamp`,
//!   `properties`, in any order. An empty cell means "absent". `timestamp`
//!   is RFC 3339 or epoch milliseconds; `properties` is the text of a JSON
//!   object (quote the cell, doubling inner quotes, as CSV does). Another
//!   column name is an error.
//!
//! Invariants:
//! - Every record is validated by the service's own [`EventValidator`]
//!   (custom event schemas included) and committed through the service's
//!   own [`Pipeline`], in chunks of `analytics.ingestion.batch_size`: what
//!   an import stores is exactly what HTTP would have stored.
//! - Idempotent: a record without `id` gets a UUIDv5 (namespace
//!   [`IMPORT_NAMESPACE`]) of its content: the bytes of the NDJSON line
//!   without its line ending, or the CSV fields joined by the unit
//!   separator 0x1F. Re-importing a file stores nothing twice. (Two
//!   identical lines without `id` are the same event.)
//! - Bounded memory: the file is streamed; at most two chunks are in flight
//!   (one being read, one being committed), and a line longer than
//!   `analytics.ingestion.max_body_bytes` is rejected without being held.
//! - Line numbers are 1-based physical lines of the file (for CSV: the line
//!   where the record starts).

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::config::Config;
use crate::model::Event;
use crate::model::event::now_ms;
use crate::model::wire::{WireEvent, read_json};
use crate::pipeline::validate::EventValidator;
use crate::pipeline::{Pipeline, SubmitError};
use crate::telemetry::Telemetry;

/// Namespace of the UUIDv5 ids given to imported records without `id`.
pub const IMPORT_NAMESPACE: Uuid = Uuid::from_u128(0x6b0f_2d1e_5a3c_4f7e_9b25_a11c_0de5_1e01);

/// Chunks waiting between the reader thread and the committer.
const CHUNKS_IN_FLIGHT: usize = 1;
/// How often an overloaded pipeline is retried before the import gives up.
const OVERLOAD_RETRIES: u32 = 200;

/// File format of an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ImportFormat {
    Ndjson,
    Csv,
}

/// Options of `analytics import`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The file to import.
    pub file: PathBuf,
    /// File format (default: `csv` for a `.csv` file, else `ndjson`).
    #[arg(long, value_enum)]
    pub format: Option<ImportFormat>,
    /// How many rejected records to list (all are counted).
    #[arg(long, default_value_t = 20)]
    pub max_reported: usize,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// One refused record.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RejectedLine {
    pub line: u64,
    pub error: String,
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub file: PathBuf,
    pub format: ImportFormat,
    /// Records read (blank NDJSON lines excluded).
    pub records: u64,
    /// Newly stored events.
    pub accepted: u64,
    /// Events whose id was already stored.
    pub duplicates: u64,
    /// Records refused (malformed or invalid).
    pub rejected: u64,
    /// The first `max_reported` refused records.
    pub rejected_lines: Vec<RejectedLine>,
    pub elapsed_seconds: f64,
    pub events_per_second: f64,
}

impl ImportReport {
    /// Human-readable report, several lines.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "imported {} ({:?}): {} records, {} accepted, {} duplicates, {} rejected in {:.2}s ({:.0} records/s)\n",
            self.file.display(),
            self.format,
            self.records,
            self.accepted,
            self.duplicates,
            self.rejected,
            self.elapsed_seconds,
            self.events_per_second,
        );
        for rejected in &self.rejected_lines {
            text.push_str(&format!("  line {}: {}\n", rejected.line, rejected.error));
        }
        if self.rejected > self.rejected_lines.len() as u64 {
            text.push_str(&format!(
                "  ... and {} more rejected records\n",
                self.rejected - self.rejected_lines.len() as u64
            ));
        }
        text
    }
}

/// What the reader thread found besides the events it handed over.
#[derive(Default)]
struct ReadOutcome {
    records: u64,
    rejected: u64,
    rejected_lines: Vec<RejectedLine>,
}

impl ReadOutcome {
    fn reject(&mut self, line: u64, error: impl Into<String>, max_reported: usize) {
        self.rejected += 1;
        if self.rejected_lines.len() < max_reported {
            self.rejected_lines.push(RejectedLine {
                line,
                error: error.into(),
            });
        }
    }
}

/// A chunk of validated events and the line each came from.
struct Chunk {
    events: Vec<Event>,
    first_line: u64,
    last_line: u64,
}

/// Everything the reader thread needs.
struct Reader {
    path: PathBuf,
    format: ImportFormat,
    validator: Arc<EventValidator>,
    chunk_size: usize,
    max_line_bytes: usize,
    max_reported: usize,
    sender: mpsc::Sender<Chunk>,
    bar: ProgressBar,
}

/// Runs `analytics import`: opens the configured store, imports, prints the
/// report (text on stderr, JSON on stdout with `--json`).
pub async fn run(config: &Config, args: &ImportArgs) -> anyhow::Result<ImportReport> {
    let report = import_file(config, args).await?;
    eprint!("{}", report.to_text());
    if args.json {
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer(&mut stdout, &report).context("cannot write the report")?;
        writeln!(stdout).context("cannot write the report")?;
    }
    Ok(report)
}

/// Imports `args.file` into the store of `config` and returns the report.
pub async fn import_file(config: &Config, args: &ImportArgs) -> anyhow::Result<ImportReport> {
    let format = args.format.unwrap_or_else(|| detect_format(&args.file));
    let file_size = std::fs::metadata(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?
        .len();
    let store = crate::open_store(config).await?;
    let validator = crate::event_validator(config, &*store).await?;
    let ingestion = &config.analytics.ingestion;
    let (pipeline, committer) = Pipeline::start(
        store,
        crate::pipeline_settings(config, None)?,
        Arc::new(Telemetry::new()),
    );
    let bar = progress_bar(args.quiet, file_size);
    let (sender, mut receiver) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let reader = Reader {
        path: args.file.clone(),
        format,
        validator,
        chunk_size: ingestion.batch_size.max(1),
        max_line_bytes: ingestion.max_body_bytes,
        max_reported: args.max_reported,
        sender,
        bar: bar.clone(),
    };
    let started = Instant::now();
    let reading = tokio::task::spawn_blocking(move || reader.read_all());
    let mut accepted = 0u64;
    let mut duplicates = 0u64;
    let mut commit_error = None;
    while let Some(chunk) = receiver.recv().await {
        match submit_with_retry(&pipeline, chunk.events).await {
            Ok(inserted) => {
                let new_events = inserted.iter().filter(|flag| **flag).count() as u64;
                accepted += new_events;
                duplicates += inserted.len() as u64 - new_events;
            }
            Err(error) => {
                commit_error = Some(anyhow::anyhow!(
                    "lines {}..={} were not stored: {error}",
                    chunk.first_line,
                    chunk.last_line
                ));
                break;
            }
        }
    }
    // Dropping the receiver stops the reader at its next chunk.
    drop(receiver);
    let outcome = reading.await.context("import reader failed")?;
    drop(pipeline);
    committer.await.context("ingest committer failed")?;
    bar.finish_and_clear();
    if let Some(error) = commit_error {
        return Err(error.context(format!(
            "import of {} stopped; {accepted} events were stored before",
            args.file.display()
        )));
    }
    let outcome = outcome?;
    let elapsed = started.elapsed();
    Ok(ImportReport {
        file: args.file.clone(),
        format,
        records: outcome.records,
        accepted,
        duplicates,
        rejected: outcome.rejected,
        rejected_lines: outcome.rejected_lines,
        elapsed_seconds: elapsed.as_secs_f64(),
        events_per_second: (outcome.records as f64 / elapsed.as_secs_f64().max(1e-9)).round(),
    })
}

async fn submit_with_retry(
    pipeline: &Pipeline,
    events: Vec<Event>,
) -> Result<Vec<bool>, SubmitError> {
    let mut attempt = 0;
    loop {
        // The pipeline consumes its input; keep a copy only while a retry
        // is still possible (an overload is rare: the import is usually the
        // only submitter).
        match pipeline.submit(events.clone()).await {
            Err(SubmitError::Overloaded) if attempt < OVERLOAD_RETRIES => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

fn detect_format(path: &Path) -> ImportFormat {
    match path.extension().and_then(|extension| extension.to_str()) {
        Some(extension) if extension.eq_ignore_ascii_case("csv") => ImportFormat::Csv,
        _ => ImportFormat::Ndjson,
    }
}

fn progress_bar(quiet: bool, file_size: u64) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(file_size), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, eta {eta}) {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// What reading one NDJSON line gave.
enum Line {
    /// A whole line (without its ending) is in the buffer.
    Complete,
    /// The line was longer than the limit and was skipped.
    TooLong,
    /// End of file.
    End,
}

/// Reads one line into `buffer` (cleared first), holding at most `limit`
/// bytes of it; returns the bytes consumed too.
fn read_line_bounded(
    reader: &mut impl BufRead,
    buffer: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<(Line, usize)> {
    buffer.clear();
    let mut consumed_total = 0;
    let mut too_long = false;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            let line = if too_long {
                Line::TooLong
            } else if consumed_total == 0 {
                Line::End
            } else {
                Line::Complete
            };
            return Ok((line, consumed_total));
        }
        let (part, found_newline) = match available.iter().position(|byte| *byte == b'\n') {
            Some(position) => (&available[..position], true),
            None => (available, false),
        };
        if !too_long {
            if buffer.len() + part.len() > limit {
                too_long = true;
                buffer.clear();
            } else {
                buffer.extend_from_slice(part);
            }
        }
        let consumed = part.len() + usize::from(found_newline);
        reader.consume(consumed);
        consumed_total += consumed;
        if found_newline {
            if buffer.last() == Some(&b'\r') {
                buffer.pop();
            }
            return Ok((
                if too_long {
                    Line::TooLong
                } else {
                    Line::Complete
                },
                consumed_total,
            ));
        }
    }
}

impl Reader {
    fn read_all(self) -> anyhow::Result<ReadOutcome> {
        let file = File::open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        let buffered = BufReader::with_capacity(1 << 20, file);
        match self.format {
            ImportFormat::Ndjson => self.read_ndjson(buffered),
            ImportFormat::Csv => self.read_csv(buffered),
        }
    }

    /// Validates one record and adds it to the chunk, or records why not.
    fn accept(
        &self,
        wire: impl Into<WireEvent>,
        content: &[u8],
        line: u64,
        now: i64,
        chunk: &mut Chunk,
        outcome: &mut ReadOutcome,
    ) {
        match self
            .validator
            .validate(wire, now, || Uuid::new_v5(&IMPORT_NAMESPACE, content))
        {
            Ok(event) => {
                if chunk.events.is_empty() {
                    chunk.first_line = line;
                }
                chunk.last_line = line;
                chunk.events.push(event);
            }
            Err(rejection) => {
                let error = match rejection.field() {
                    field if field.is_empty() => rejection.to_string(),
                    field => format!("{rejection} (field {field})"),
                };
                outcome.reject(line, error, self.max_reported);
            }
        }
    }

    /// Hands a full chunk to the committer; `false` when it has stopped.
    fn flush(&self, chunk: &mut Chunk, force: bool) -> bool {
        if chunk.events.is_empty() || (!force && chunk.events.len() < self.chunk_size) {
            return true;
        }
        let full = std::mem::replace(
            chunk,
            Chunk {
                events: Vec::with_capacity(self.chunk_size),
                first_line: 0,
                last_line: 0,
            },
        );
        self.sender.blocking_send(full).is_ok()
    }

    fn read_ndjson(&self, mut reader: impl BufRead) -> anyhow::Result<ReadOutcome> {
        let mut outcome = ReadOutcome::default();
        let mut chunk = Chunk {
            events: Vec::with_capacity(self.chunk_size),
            first_line: 0,
            last_line: 0,
        };
        let mut buffer = Vec::with_capacity(4096);
        let mut line_number = 0u64;
        let mut bytes_read = 0u64;
        let mut now = now_ms();
        loop {
            let (line, consumed) = read_line_bounded(&mut reader, &mut buffer, self.max_line_bytes)
                .with_context(|| format!("cannot read {}", self.path.display()))?;
            bytes_read += consumed as u64;
            line_number += 1;
            match line {
                Line::End => break,
                Line::TooLong => {
                    outcome.records += 1;
                    outcome.reject(
                        line_number,
                        format!("line longer than {} bytes", self.max_line_bytes),
                        self.max_reported,
                    );
                }
                Line::Complete => {
                    if buffer.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    outcome.records += 1;
                    match read_json::<WireEvent>(&buffer) {
                        Ok(wire) => {
                            self.accept(wire, &buffer, line_number, now, &mut chunk, &mut outcome)
                        }
                        Err(error) => outcome.reject(
                            line_number,
                            format!("malformed JSON: {error}"),
                            self.max_reported,
                        ),
                    }
                }
            }
            if chunk.events.len() >= self.chunk_size {
                if !self.flush(&mut chunk, false) {
                    return Ok(outcome);
                }
                self.bar.set_position(bytes_read);
                now = now_ms();
            }
        }
        self.flush(&mut chunk, true);
        Ok(outcome)
    }

    fn read_csv(&self, reader: impl Read) -> anyhow::Result<ReadOutcome> {
        let mut csv_reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(reader);
        let columns =
            CsvColumns::from_header(csv_reader.byte_headers().with_context(|| {
                format!("cannot read the CSV header of {}", self.path.display())
            })?)?;
        let mut outcome = ReadOutcome::default();
        let mut chunk = Chunk {
            events: Vec::with_capacity(self.chunk_size),
            first_line: 0,
            last_line: 0,
        };
        let mut record = csv::ByteRecord::new();
        let mut content = Vec::with_capacity(512);
        let mut now = now_ms();
        loop {
            let line = csv_reader.position().line();
            match csv_reader.read_byte_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {
                    outcome.records += 1;
                    // The record's own start line (the position before the
                    // read may sit on the previous record's line ending).
                    let line = record.position().map_or(line, csv::Position::line);
                    content.clear();
                    for (index, field) in record.iter().enumerate() {
                        if index > 0 {
                            content.push(0x1F);
                        }
                        content.extend_from_slice(field);
                    }
                    match columns.to_value(&record) {
                        Ok(value) => {
                            self.accept(value, &content, line, now, &mut chunk, &mut outcome)
                        }
                        Err(error) => outcome.reject(line, error, self.max_reported),
                    }
                }
                Err(error) => match error.kind() {
                    csv::ErrorKind::Io(_) => {
                        return Err(anyhow::anyhow!("{error}"))
                            .with_context(|| format!("cannot read {}", self.path.display()));
                    }
                    _ => {
                        outcome.records += 1;
                        let line = error.position().map_or(line, csv::Position::line);
                        outcome.reject(line, format!("malformed CSV: {error}"), self.max_reported);
                    }
                },
            }
            if chunk.events.len() >= self.chunk_size {
                if !self.flush(&mut chunk, false) {
                    return Ok(outcome);
                }
                self.bar.set_position(csv_reader.position().byte());
                now = now_ms();
            }
        }
        self.flush(&mut chunk, true);
        Ok(outcome)
    }
}

/// Where each known column sits in a CSV record.
struct CsvColumns {
    id: Option<usize>,
    event_type: usize,
    user_id: Option<usize>,
    session_id: Option<usize>,
    timestamp: Option<usize>,
    properties: Option<usize>,
}

impl CsvColumns {
    fn from_header(header: &csv::ByteRecord) -> anyhow::Result<Self> {
        let mut found: [Option<usize>; 6] = [None; 6];
        const NAMES: [&str; 6] = [
            "id",
            "event_type",
            "user_id",
            "session_id",
            "timestamp",
            "properties",
        ];
        for (index, name) in header.iter().enumerate() {
            let name = String::from_utf8_lossy(name);
            let name = name.trim().trim_start_matches('\u{feff}');
            let Some(slot) = NAMES.iter().position(|known| *known == name) else {
                bail!(
                    "unknown CSV column {name:?}; the columns are {}",
                    NAMES.join(", ")
                );
            };
            if found[slot].replace(index).is_some() {
                bail!("CSV column {name:?} appears twice");
            }
        }
        let [id, event_type, user_id, session_id, timestamp, properties] = found;
        Ok(CsvColumns {
            id,
            event_type: event_type.context("the CSV header has no event_type column")?,
            user_id,
            session_id,
            timestamp,
            properties,
        })
    }

    /// The wire JSON of one record, or why it cannot be one.
    fn to_value(&self, record: &csv::ByteRecord) -> Result<Value, String> {
        let text = |column: Option<usize>, name: &str| -> Result<Option<String>, String> {
            match column.and_then(|index| record.get(index)) {
                None | Some(b"") => Ok(None),
                Some(bytes) => std::str::from_utf8(bytes)
                    .map(|text| Some(text.to_string()))
                    .map_err(|_| format!("{name} is not valid UTF-8")),
            }
        };
        let mut object = Map::new();
        for (column, name) in [
            (self.id, "id"),
            (Some(self.event_type), "event_type"),
            (self.user_id, "user_id"),
            (self.session_id, "session_id"),
            (self.timestamp, "timestamp"),
        ] {
            if let Some(value) = text(column, name)? {
                object.insert(name.to_string(), Value::String(value));
            }
        }
        if let Some(index) = self.properties
            && let Some(bytes) = record.get(index).filter(|bytes| !bytes.is_empty())
        {
            let properties: Value = read_json(bytes)
                .map_err(|error| format!("properties is not valid JSON: {error}"))?;
            object.insert("properties".into(), properties);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::format_timestamp;

    fn config_for(dir: &Path) -> Config {
        let mut config = Config::default();
        config.database.path = dir.join("import.db");
        config.analytics.ingestion.batch_size = 2;
        config
    }

    fn args(file: PathBuf) -> ImportArgs {
        ImportArgs {
            file,
            format: None,
            max_reported: 10,
            quiet: true,
            json: false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reimporting_a_file_stores_nothing_twice_and_bad_lines_are_numbered() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_for(dir.path());
        let recent = format_timestamp(now_ms() - 3_600_000);
        let file = dir.path().join("events.ndjson");
        let lines = [
            format!(
                r#"{{"event_type":"order.placed","user_id":"u1","timestamp":"{recent}","properties":{{"symbol":"BTCUSDT","price":50000,"quantity":0.1}}}}"#
            ),
            String::new(),
            format!(r#"{{"event_type":"page.view","user_id":"u2","timestamp":"{recent}"}}"#),
            "{not json".to_string(),
            format!(
                r#"{{"id":"3f1c8f0e-2c1b-4a53-9a57-0c5f0b6f7a10","event_type":"user.login","timestamp":"{recent}"}}"#
            ),
            format!(r#"{{"user_id":"u3","timestamp":"{recent}"}}"#),
            r#"{"event_type":"page.view"}"#.to_string(),
        ];
        std::fs::write(&file, lines.join("\n") + "\n").unwrap();

        let first = import_file(&config, &args(file.clone())).await.unwrap();
        assert_eq!(first.records, 6);
        assert_eq!(first.accepted, 4, "{first:?}");
        assert_eq!(first.duplicates, 0);
        assert_eq!(first.rejected, 2);
        let rejected_lines: Vec<u64> = first.rejected_lines.iter().map(|r| r.line).collect();
        assert_eq!(rejected_lines, vec![4, 6]);
        assert!(first.rejected_lines[0].error.contains("malformed JSON"));
        assert!(first.rejected_lines[1].error.contains("event_type"));

        // The second run: same ids (client id or UUIDv5 of the line, even
        // for the line without a timestamp), so everything is a duplicate.
        let second = import_file(&config, &args(file)).await.unwrap();
        assert_eq!(second.accepted, 0, "{second:?}");
        assert_eq!(second.duplicates, 4);
        assert_eq!(second.rejected, 2);

        let store = crate::open_store(&config).await.unwrap();
        let stored = store.scan_events(0, i64::MAX, true).await.unwrap();
        assert_eq!(stored.len(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn csv_import_reads_quoted_properties_and_reports_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_for(dir.path());
        let recent = now_ms() - 60_000;
        let file = dir.path().join("events.csv");
        let text = format!(
            "event_type,user_id,timestamp,properties\n\
             order.filled,u1,{recent},\"{{\"\"symbol\"\":\"\"ETHUSDT\"\",\"\"price\"\":3000,\"\"quantity\"\":2}}\"\n\
             order.placed,u2,{recent},{{broken\n\
             page.view,u3,,\n"
        );
        std::fs::write(&file, text).unwrap();
        let first = import_file(&config, &args(file.clone())).await.unwrap();
        assert_eq!((first.accepted, first.rejected), (2, 1), "{first:?}");
        assert_eq!(first.rejected_lines[0].line, 3);
        assert!(first.rejected_lines[0].error.contains("properties"));
        let second = import_file(&config, &args(file)).await.unwrap();
        assert_eq!((second.accepted, second.duplicates), (0, 2), "{second:?}");

        let store = crate::open_store(&config).await.unwrap();
        let stored = store.scan_events(0, i64::MAX, true).await.unwrap();
        let filled = stored
            .iter()
            .find(|event| event.event_type == "order.filled")
            .unwrap();
        assert_eq!(filled.number("price"), Some(3000.0));
    }

    #[test]
    fn unknown_csv_column_is_named() {
        let header = csv::ByteRecord::from(vec!["event_type", "colour"]);
        let error = CsvColumns::from_header(&header).err().unwrap().to_string();
        assert!(error.contains("colour"), "{error}");
    }

    #[test]
    fn overlong_line_is_skipped_not_held() {
        let input = b"short\nthis line is too long\nok\n";
        let mut reader = BufReader::with_capacity(4, &input[..]);
        let mut buffer = Vec::new();
        let mut results = Vec::new();
        loop {
            let (line, _) = read_line_bounded(&mut reader, &mut buffer, 8).unwrap();
            match line {
                Line::End => break,
                Line::TooLong => results.push("<too long>".to_string()),
                Line::Complete => results.push(String::from_utf8(buffer.clone()).unwrap()),
            }
        }
        assert_eq!(results, vec!["short", "<too long>", "ok"]);
    }
}
