//! runc client.
