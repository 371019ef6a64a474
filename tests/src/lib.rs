//! `shoal-tests`: the cluster harness that runs real `shoal` processes, the chaos suite and the
//! convergence benchmark.
//!
//! Not built yet: this crate is the subject of issues 4 and 6. It exports nothing so far.
