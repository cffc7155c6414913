//! Integration tests of presence-gw live in `tests/tests/`; this library is
//! empty and exists so the folder is a workspace member that cargo builds.
