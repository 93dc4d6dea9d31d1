//! Random numbers from counter-based keys (stub until implemented).
