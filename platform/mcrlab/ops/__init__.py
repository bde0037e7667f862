"""Operations: the local cluster and job submission."""
