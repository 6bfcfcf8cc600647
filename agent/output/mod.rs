//! Stage 6: where exchanges go. For now NDJSON to any writer (stdout for `meshtap parse`).

pub mod ndjson;

pub use ndjson::NdjsonWriter;
