//! Destination sets and node selection (being written).
