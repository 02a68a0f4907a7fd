//! Call-ID -> node table (being written).
