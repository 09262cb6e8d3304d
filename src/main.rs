use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use futures::FutureExt;
use regcred::cli::{Cli, Command, RunArgs};
use regcred::controller::{self, Settings};
use regcred::metrics::Metrics;

fn main() -> ExitCode {
    // `docker-credential-regcred VERB` is `regcred credential-helper VERB`.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as = args.first().map(|a| std::path::Path::new(a).file_name().unwrap_or_default().to_owned());
    if invoked_as.is_some_and(|n| n.to_string_lossy().starts_with("docker-credential-")) {
        args.insert(1, "credential-helper".into());
    }
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::KubeletCredentialProvider(args) => {
            return standalone(|rt| {
                rt.block_on(regcred::standalone::kubelet::run(&args.config, &mut std::io::stdin()))
                    .map_err(|e| (format!("regcred: {e}"), false))
            });
        }
        Command::CredentialHelper(args) => {
            return standalone(|rt| {
                rt.block_on(regcred::standalone::helper::run(&args.verb, &mut std::io::stdin())).map_err(|e| (e, true))
            });
        }
        Command::Explain(args) => {
            let json = args.output == "json";
            let verdict = tokio::runtime::Runtime::new().map_err(anyhow::Error::from).and_then(|rt| {
                rt.block_on(async {
                    let client = regcred::explain_cli::client(args.kubeconfig.as_deref()).await?;
                    match &args.what {
                        regcred::cli::ExplainWhat::Pod { pod } => {
                            let access = regcred::explain_cli::RegistryAccess {
                                check: args.check_registry,
                                plain_http: args.plain_http,
                            };
                            regcred::explain_cli::pod(&client, pod, json, &access).await
                        }
                        regcred::cli::ExplainWhat::Credential { credential } => {
                            regcred::explain_cli::credential(&client, credential, json).await
                        }
                    }
                })
            });
            return match verdict {
                Ok(v) => ExitCode::from(v.exit_code()),
                Err(e) => {
                    // Nothing could be read: that is "cannot tell".
                    eprintln!("error: {e:#}");
                    ExitCode::from(regcred::explain::Verdict::CannotTell.exit_code())
                }
            };
        }
        Command::Crd(args) => crd(args.output_dir),
        Command::Version => {
            println!("regcred {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Run(args) => tokio::runtime::Runtime::new().map_err(Into::into).and_then(|rt| rt.block_on(run(args))),
        Command::Check(args) => tokio::runtime::Runtime::new().map_err(Into::into).and_then(|rt| {
            rt.block_on(regcred::check::run(regcred::check::CheckOptions {
                file: &args.file,
                verify: args.verify,
                cluster_resource_namespace: args.cluster_resource_namespace.clone(),
                kubeconfig: args.kubeconfig.as_deref(),
            }))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a plugin-style command: its answer on stdout, or one line of error
/// (on stdout for credential helpers, whose callers read it there; on
/// stderr for the kubelet) and exit 1. Logs go to stderr, warnings only.
fn standalone(f: impl FnOnce(&tokio::runtime::Runtime) -> Result<String, (String, bool)>) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(std::env::var("REGCRED_LOG_LEVEL").unwrap_or_else(|_| "warn".into()))
        .try_init();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("regcred: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match f(&rt) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err((line, on_stdout)) => {
            let line = line.replace('\n', " ");
            if on_stdout {
                println!("{line}");
            } else {
                eprintln!("{line}");
            }
            ExitCode::FAILURE
        }
    }
}

fn crd(output_dir: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    match output_dir {
        None => print!("{}", regcred::crdgen::render_yaml()),
        Some(dir) => {
            for (name, yaml) in regcred::crdgen::render_files() {
                let path = dir.join(name);
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    regcred::telemetry::init(&args.log.log_level, args.log.log_format)?;
    regcred::pacing::configure(args.pacing.config());
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => kube::Config::infer().await.context("no Kubernetes configuration found")?,
    };
    let metrics = Arc::new(Metrics::default());
    let client = regcred::metrics::counted_client(config, &metrics)?;
    let cluster_resource_namespace =
        args.cluster_resource_namespace.or_else(|| std::env::var("POD_NAMESPACE").ok()).filter(|s| !s.is_empty());
    if cluster_resource_namespace.is_none() {
        tracing::warn!(
            "no cluster resource namespace (--cluster-resource-namespace or POD_NAMESPACE): ClusterRegistryCredentials cannot read source Secrets"
        );
    }
    let settings = Settings {
        cluster_resource_namespace,
        concurrency: args.concurrency,
        write_concurrency: args.write_concurrency,
        allow_namespaced_ambient_identity: args.allow_namespaced_ambient_identity,
        fleet_cleanup_timeout: std::time::Duration::from_secs(args.fleet.fleet_cleanup_timeout_seconds),
    };
    let server = tokio::spawn(regcred::metrics::serve(args.metrics_addr, metrics.clone()));
    let identity = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("regcred-{}-{}", std::process::id(), rand::random::<u32>()));
    // Every replica serves its shards of the fleet; only the leader mints.
    let fleet = match (&settings.cluster_resource_namespace, args.fleet.fleet) {
        (Some(namespace), true) => {
            let fleet = regcred::controller::fleet::FleetSettings {
                namespace: namespace.clone(),
                identity: identity.clone(),
                shards: args.fleet.fleet_shards,
                lease_seconds: args.leader.leader_elect.then_some(args.leader.lease_duration_seconds),
                write_concurrency: args.write_concurrency,
            };
            regcred::controller::fleet::run(client.clone(), fleet, metrics.clone()).boxed()
        }
        (None, true) => {
            tracing::warn!(
                "no cluster resource namespace: the fleet (kubeconfig Secrets of other clusters) is off; set --cluster-resource-namespace or POD_NAMESPACE"
            );
            futures::future::pending().boxed()
        }
        _ => futures::future::pending().boxed(),
    };
    let election = if args.leader.leader_elect {
        let namespace = args
            .leader
            .leader_election_namespace
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()))
            .or_else(|| settings.cluster_resource_namespace.clone())
            .context(
                "--leader-elect needs a namespace for its Lease: set --leader-election-namespace or POD_NAMESPACE",
            )?;
        Some(regcred::leader::Election {
            namespace,
            lease_name: args.leader.leader_election_lease_name,
            identity,
            duration_seconds: args.leader.lease_duration_seconds,
        })
    } else {
        metrics.leader.set(1);
        None
    };
    let work = controller::run(client.clone(), settings, metrics.clone());
    let work = async move {
        match election {
            Some(e) => regcred::leader::run_as_leader(client, e, metrics, work).await,
            None => work.await,
        }
    };
    tokio::select! {
        r = work => r,
        r = fleet => r,
        r = server => Err(anyhow::anyhow!("metrics server stopped: {:?}", r)),
    }
}
