//! The `regcred` command line. Every flag can also be set from the
//! environment (`REGCRED_*`).

use clap::{Parser, Subcommand};

/// regcred keeps Kubernetes image pull secrets fresh.
#[derive(Debug, Parser)]
#[command(name = "regcred", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crd(CrdArgs),
    /// Mint a credential once, outside the operator, and print a redacted
    /// summary. Source Secrets come from the same file if it has any, else
    /// from the cluster (kubeconfig).
    Check(CheckArgs),
    /// The kubelet's image credential provider plugin: reads a
    /// CredentialProviderRequest on stdin, writes a
    /// CredentialProviderResponse (docs/kubelet.md).
    KubeletCredentialProvider(KubeletProviderArgs),
    /// The Docker/Podman/skopeo credential helper protocol (get, list,
    /// store, erase); also run as `docker-credential-regcred`
    /// (docs/credential-helper.md).
    CredentialHelper(HelperArgs),
    /// Why a Pod can or cannot pull its images (docs/troubleshooting.md);
    /// also run as the kubectl plugin `kubectl regcred explain` (the binary
    /// installed as `kubectl-regcred`). Exit code: 0 would pull, 1 would not
    /// pull, 2 cannot tell.
    Explain(ExplainArgs),
    /// Print the version.
    Version,
}

/// Options of `regcred explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    #[command(subcommand)]
    pub what: ExplainWhat,
    /// `text` (default) or `json`.
    #[arg(short = 'o', long = "output", default_value = "text", global = true, value_parser = ["text", "json"])]
    pub output: String,
    /// Kubeconfig to read the cluster with.
    #[arg(long, env = "KUBECONFIG", global = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Also log in to each image's registry with the Secret the kubelet
    /// would use and ask for the image's manifest (HEAD: not counted as a
    /// pull by registries that count pulls); reports the registry's answer
    /// and its pull quota where it sends one.
    #[arg(long, global = true)]
    pub check_registry: bool,
    /// Talk plain HTTP to registries (test registries only).
    #[arg(long, global = true)]
    pub plain_http: bool,
}

/// What `regcred explain` explains.
#[derive(Debug, Subcommand)]
pub enum ExplainWhat {
    /// A Pod: NAMESPACE/NAME.
    Pod {
        /// NAMESPACE/NAME.
        pod: String,
    },
    /// A credential: NAME (ClusterRegistryCredential) or NAMESPACE/NAME
    /// (RegistryCredential): its targets, the namespaces missing the Secret
    /// and why, conflicts, the ServiceAccounts patched, the next refresh.
    /// Exit code 0 when every target is complete, 1 when not.
    Credential {
        /// NAME or NAMESPACE/NAME.
        credential: String,
    },
}

/// Options of `regcred kubelet-credential-provider`.
#[derive(Debug, clap::Args)]
pub struct KubeletProviderArgs {
    /// The ProviderConfig file mapping image patterns to providers.
    #[arg(long, env = "REGCRED_PROVIDER_CONFIG")]
    pub config: std::path::PathBuf,
}

/// Options of `regcred credential-helper`.
#[derive(Debug, clap::Args)]
pub struct HelperArgs {
    /// get, list, store or erase.
    pub verb: String,
}

/// Options of `regcred run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = "REGCRED_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,
    /// Namespace holding the source Secrets of ClusterRegistryCredentials.
    /// Defaults to the operator's own namespace ($POD_NAMESPACE).
    #[arg(long, env = "REGCRED_CLUSTER_RESOURCE_NAMESPACE")]
    pub cluster_resource_namespace: Option<String>,
    /// Kubeconfig to use; in-cluster configuration when unset.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Credentials reconciled in parallel. A credential waiting for its
    /// provider endpoint's pacing holds one, so there are enough that the
    /// others (and new ones) do not queue behind a paced endpoint.
    #[arg(long, env = "REGCRED_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Kubernetes writes in flight per credential during a fan-out, and
    /// ServiceAccount patches in flight.
    #[arg(long, env = "REGCRED_WRITE_CONCURRENCY", default_value_t = 32)]
    pub write_concurrency: usize,
    /// Let namespaced RegistryCredentials use the operator's own cloud
    /// identity (IRSA, GKE workload identity, managed identity). Off by
    /// default: a tenant should get only its own ServiceAccount's permissions.
    #[arg(long, env = "REGCRED_ALLOW_NAMESPACED_AMBIENT_IDENTITY")]
    pub allow_namespaced_ambient_identity: bool,
    #[command(flatten)]
    pub pacing: PacingArgs,
    #[command(flatten)]
    pub fleet: FleetArgs,
    #[command(flatten)]
    pub leader: LeaderArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Pacing of provider calls, per provider endpoint (an ECR region, an Entra
/// authority, a Harbor), shared by every credential using it
/// (docs/operations.md).
#[derive(Debug, clap::Args)]
pub struct PacingArgs {
    /// Provider calls started per endpoint in any one second. The default
    /// is half of ECR's sustained GetAuthorizationToken rate (20 per second
    /// per account and region).
    #[arg(long, env = "REGCRED_PROVIDER_CALLS_PER_SECOND", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub provider_calls_per_second: u32,
    /// Provider calls in flight per endpoint.
    #[arg(long, env = "REGCRED_PROVIDER_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub provider_concurrency: u32,
    /// Retries of a throttled provider call, after the endpoint's backoff,
    /// before the credential reports ProviderThrottled.
    #[arg(long, env = "REGCRED_PROVIDER_THROTTLE_RETRIES", default_value_t = 3)]
    pub provider_throttle_retries: u32,
    /// The longest backoff of a throttled endpoint, in seconds (a longer
    /// Retry-After is shortened to it).
    #[arg(long, env = "REGCRED_PROVIDER_MAX_BACKOFF_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub provider_max_backoff_seconds: u64,
}

impl PacingArgs {
    /// The pacing configuration these flags describe.
    pub fn config(&self) -> crate::pacing::Config {
        let max_backoff = std::time::Duration::from_secs(self.provider_max_backoff_seconds);
        crate::pacing::Config {
            calls_per_second: self.provider_calls_per_second,
            concurrency: self.provider_concurrency as usize,
            throttle_retries: self.provider_throttle_retries,
            max_backoff,
            max_throttle_wait: max_backoff,
        }
    }
}

/// The fleet: other clusters a ClusterRegistryCredential writes to
/// (docs/fleet.md).
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// Serve the clusters registered as kubeconfig Secrets in the cluster
    /// resource namespace. On by default; nothing is written anywhere until
    /// a ClusterRegistryCredential selects clusters.
    #[arg(long, env = "REGCRED_FLEET", default_value_t = true, action = clap::ArgAction::Set)]
    pub fleet: bool,
    /// Shards the clusters are spread over. With --leader-elect each
    /// replica serves the shards whose Lease it holds; keep it at least the
    /// number of replicas.
    #[arg(long, env = "REGCRED_FLEET_SHARDS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub fleet_shards: u32,
    /// Seconds the finalizer of a deleted credential waits for unreachable
    /// clusters to remove its Secrets before it lets the deletion finish
    /// (with a FleetCleanupIncomplete Event); they are removed when the
    /// clusters come back.
    #[arg(long, env = "REGCRED_FLEET_CLEANUP_TIMEOUT_SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(0..=86400))]
    pub fleet_cleanup_timeout_seconds: u64,
}

/// Leader election: with several replicas, only the holder of a Lease writes.
#[derive(Debug, clap::Args)]
pub struct LeaderArgs {
    /// Elect a leader through a coordination.k8s.io Lease; only the leader
    /// reconciles and writes. A replica that loses the Lease exits at once.
    #[arg(long, env = "REGCRED_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the Lease. Defaults to $POD_NAMESPACE, then the cluster
    /// resource namespace.
    #[arg(long, env = "REGCRED_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, env = "REGCRED_LEADER_ELECTION_LEASE_NAME", default_value = "regcred")]
    pub leader_election_lease_name: String,
    /// Seconds a leader holds the Lease without renewing it; a new leader
    /// takes over within this time after the old one dies.
    #[arg(long, env = "REGCRED_LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=600))]
    pub lease_duration_seconds: u64,
}

/// Logging options.
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Log level or filter directives (`info`, `debug`, `regcred=debug,kube=warn`).
    #[arg(long, env = "REGCRED_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "REGCRED_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: crate::telemetry::LogFormat,
}

/// Options of `regcred check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// A RegistryCredential or ClusterRegistryCredential manifest.
    #[arg(short = 'f', long = "filename")]
    pub file: std::path::PathBuf,
    /// Also log in to the registry with the minted credential.
    #[arg(long)]
    pub verify: bool,
    /// Namespace of a ClusterRegistryCredential's source Secrets.
    #[arg(long, env = "REGCRED_CLUSTER_RESOURCE_NAMESPACE")]
    pub cluster_resource_namespace: Option<String>,
    /// Kubeconfig for reading source Secrets from a cluster.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
}

/// Options of `regcred crd`.
#[derive(Debug, clap::Args)]
pub struct CrdArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long)]
    pub output_dir: Option<std::path::PathBuf>,
}
