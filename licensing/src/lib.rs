//! License keys: format, signatures, roles and activation records. Pure: no I/O.
