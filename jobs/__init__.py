"""The stage workloads: entry modules `jobs.<kind>`, the pod launcher, their libraries by role."""
