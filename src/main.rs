use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use regcred::cli::{Cli, Command, RunArgs};
use regcred::controller::{self, Settings};
use regcred::metrics::{Metrics, RequestCounter};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
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
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => kube::Config::infer().await.context("no Kubernetes configuration found")?,
    };
    let metrics = Arc::new(Metrics::default());
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&RequestCounter(metrics.kube_requests.clone()))
        .build();
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
    };
    let server = tokio::spawn(regcred::metrics::serve(args.metrics_addr, metrics.clone()));
    let election = if args.leader.leader_elect {
        let namespace = args
            .leader
            .leader_election_namespace
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()))
            .or_else(|| settings.cluster_resource_namespace.clone())
            .context(
                "--leader-elect needs a namespace for its Lease: set --leader-election-namespace or POD_NAMESPACE",
            )?;
        let identity = std::env::var("POD_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("regcred-{}-{}", std::process::id(), rand::random::<u32>()));
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
        r = server => Err(anyhow::anyhow!("metrics server stopped: {:?}", r)),
    }
}
