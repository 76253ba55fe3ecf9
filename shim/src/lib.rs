//! sturdy shim library.
