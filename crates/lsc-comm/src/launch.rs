//! Was this process started by an MPI launcher? Read from the environment only, so that a
//! build without MPI can still tell that it was started by `mpirun` and refuse to run alone.

/// What the environment says about the process's launcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// The variable that gave it away, e.g. `OMPI_COMM_WORLD_SIZE`.
    pub variable: &'static str,
    /// The number of processes the launcher started.
    pub world_size: usize,
    /// This process's rank, when the launcher says.
    pub rank: Option<usize>,
}

/// (size variable, rank variable) pairs: Open MPI, PMIx (Open MPI 5, Slurm), PMI (MPICH,
/// Intel MPI, Slurm's PMI-1/2).
const VARS: [(&str, &str); 3] = [
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
    ("PMIX_SIZE", "PMIX_RANK"),
    ("PMI_SIZE", "PMI_RANK"),
];

/// `Some` when an MPI launcher (`mpirun`, `mpiexec`, `srun`) started this process, read from
/// `get` (pass `|k| std::env::var(k).ok()`).
pub fn launched_by(get: impl Fn(&str) -> Option<String>) -> Option<Launch> {
    VARS.iter().find_map(|&(size, rank)| {
        let world_size = get(size)?.trim().parse().ok()?;
        Some(Launch {
            variable: size,
            world_size,
            rank: get(rank).and_then(|r| r.trim().parse().ok()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_open_mpi_and_pmi() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(launched_by(env(&[])), None);
        assert_eq!(
            launched_by(env(&[("OMPI_COMM_WORLD_SIZE", "4"), ("OMPI_COMM_WORLD_RANK", "2")])),
            Some(Launch {
                variable: "OMPI_COMM_WORLD_SIZE",
                world_size: 4,
                rank: Some(2)
            })
        );
        assert_eq!(
            launched_by(env(&[("PMI_SIZE", " 2 ")])),
            Some(Launch {
                variable: "PMI_SIZE",
                world_size: 2,
                rank: None
            })
        );
        assert_eq!(launched_by(env(&[("OMPI_COMM_WORLD_SIZE", "x")])), None);
    }
}
