//! `tern-cp run --environment kubernetes`: the apiserver is the store, its
//! watch the change feed, and the admission webhook (served over TLS,
//! registered with the CA that signs the serving certificate) validates
//! every `kubectl apply`. Everything else is the Universal control plane.

use super::{serve, tls, Part, PartFuture};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tern_kds::{OriginGuard, Role};
use tern_kube::kube;
use tern_kube::lease::LeaderElection;
use tern_kube::webhook::{self, Federation, WebhookClient};
use tern_kube::KubeStore;
use tokio::sync::watch;
use tracing::info;

#[derive(clap::Args)]
pub struct KubeArgs {
    /// Kubernetes: the kubeconfig to reach the apiserver with (default: in-cluster, or
    /// KUBECONFIG / ~/.kube/config).
    #[arg(long, env = "TERN_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Kubernetes: Kuma's system namespace (MeshOpenTelemetryBackends, global secrets).
    #[arg(long, default_value = "kuma-system", env = "TERN_SYSTEM_NAMESPACE")]
    system_namespace: String,
    /// Kubernetes: where the admission webhook listens (always TLS; Kuma's port 5443).
    #[arg(long, default_value = "0.0.0.0:5443", env = "TERN_WEBHOOK_ADDR")]
    webhook_addr: SocketAddr,
    /// Kubernetes: the URL the apiserver calls the webhook at, for a control plane outside
    /// the cluster; without it, the Service --webhook-service in the system namespace.
    #[arg(long, env = "TERN_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Kubernetes: the Service in front of the webhook (what `ternctl install control-plane` creates).
    #[arg(long, default_value = "tern-control-plane", env = "TERN_WEBHOOK_SERVICE")]
    webhook_service: String,
    /// Kubernetes: the CA (PEM) that signed --tls-cert-file, which the apiserver is told to
    /// trust for the webhook; without --tls-cert-file the generated CA is used.
    #[arg(long, env = "TERN_TLS_CA_FILE")]
    tls_ca_file: Option<PathBuf>,
    /// Kubernetes: the tern-dp image the injector adds to Pods.
    #[arg(long, default_value = "tern/tern-dp:latest", env = "TERN_SIDECAR_IMAGE")]
    sidecar_image: String,
    /// Kubernetes: the data-plane server as injected sidecars reach it (default: the
    /// --webhook-service Service in the system namespace, port 5678).
    #[arg(long, env = "TERN_SIDECAR_CP_ADDRESS")]
    sidecar_cp_address: Option<String>,
}

/// What Kubernetes mode adds to the control plane.
pub struct Kubernetes {
    pub store: Arc<KubeStore>,
    /// The change feed, the admission webhook, the Pod controller and the leader election.
    pub parts: Vec<Part>,
    /// Whether this replica holds the leader Lease.
    pub leader: watch::Receiver<bool>,
    /// Data planes by their Pod's ServiceAccount token, or a data-plane token.
    pub authenticate: Arc<dyn tern_tokens::Authenticate>,
}

/// Connects to the apiserver and prepares the Kubernetes parts: the store,
/// its change feed, the admission webhook (registered before it returns)
/// and the leader election. With a multi-zone `role` the webhook keeps
/// users off what the other side synced; in a zone the meshes come from the
/// global and Dataplanes from Pods are labelled for it; a global has no
/// data planes, so no Pod controller and no sidecar injector.
pub async fn start(args: &KubeArgs, tls: &tls::TlsSource, data_dir: &Path, role: Option<&Role>) -> Result<Kubernetes> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("using --kubeconfig {}", path.display()))?
        }
        None => {
            kube::Config::infer().await.context("finding the apiserver (in-cluster, KUBECONFIG or ~/.kube/config)")?
        }
    };
    let apiserver = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).context("making the Kubernetes client")?;
    let store = KubeStore::connect(client.clone(), &args.system_namespace, !matches!(role, Some(Role::Zone { .. })))
        .await
        .with_context(|| format!("connecting to the apiserver {apiserver}"))?;
    info!(apiserver = %apiserver, namespace = %args.system_namespace, "store: Kubernetes");
    let store = Arc::new(store);

    if tls.cert_file.is_none() {
        shared_ca(&client, &args.system_namespace, data_dir).await?;
    }
    let server_config = tls::server_config(tls, data_dir)?;
    let ca_pem = webhook_ca(args, tls, data_dir)?;
    let at = match &args.webhook_url {
        Some(url) => WebhookClient::Url(url.clone()),
        None => WebhookClient::Service {
            namespace: args.system_namespace.clone(),
            name: args.webhook_service.clone(),
            port: args.webhook_addr.port(),
        },
    };
    let federation = match role {
        Some(role) => Some(federation(&client, &store, role).await?),
        None => None,
    };
    // Bound before it is registered: the apiserver's first calls wait in the
    // backlog until the server runs, rather than being refused (fail closed).
    let listener = super::bind(args.webhook_addr, "admission webhook").await?;
    info!(addr = %listener.local_addr()?, "admission webhook listening");
    let injects = role != Some(&Role::Global);
    webhook::ensure_registered(&client, &at, &ca_pem, federation.is_some(), injects)
        .await
        .context("registering the admission webhook")?;

    let feed_store = store.clone();
    let feed: Part = Box::new(move |_stop| -> PartFuture {
        Box::pin(async move {
            let ended = feed_store.feed().await;
            ("Kubernetes change feed", ended.context("watching the apiserver"))
        })
    });
    let injector = tern_kube::inject::Injector {
        image: args.sidecar_image.clone(),
        cp_address: args
            .sidecar_cp_address
            .clone()
            .unwrap_or_else(|| format!("https://{}.{}.svc:5678", args.webhook_service, args.system_namespace)),
    };
    let webhook_part: Part = Box::new(move |stop| -> PartFuture {
        Box::pin(serve(
            "admission webhooks",
            listener,
            webhook::router(injector, federation),
            Some(server_config),
            stop,
        ))
    });
    let mut parts = vec![feed, webhook_part];
    match role {
        Some(Role::Global) => {}
        Some(zone) => {
            parts.push(pod_controller(&client, Arc::new(OriginGuard::new(store.clone(), zone.clone())), &store))
        }
        None => parts.push(pod_controller(&client, store.clone(), &store)),
    }
    let client_for_auth = client.clone();
    let election = LeaderElection::new(client, &args.system_namespace, replica_identity());
    info!(identity = %election.identity(), lease = tern_kube::lease::LEASE_NAME, "competing for leadership");
    let (leader_tx, leader) = watch::channel(false);
    let election_part: Part = Box::new(move |mut stop| -> PartFuture {
        Box::pin(async move {
            tokio::select! {
                _ = election.run(leader_tx) => ("leader election", Err(anyhow::anyhow!("nobody follows the leadership"))),
                _ = stop.wait_for(|s| *s) => ("leader election", Ok(())),
            }
        })
    });
    let tokens = Arc::new(tern_tokens::Verifier::new(store.clone()));
    let authenticate = Arc::new(tern_kube::auth::ServiceAccountAuth::new(client_for_auth, tokens));
    parts.push(election_part);
    Ok(Kubernetes { store, parts, leader, authenticate })
}

/// The Pod controller, writing Dataplanes into `into`.
fn pod_controller<S: tern_store::ResourceStore>(client: &kube::Client, into: Arc<S>, store: &KubeStore) -> Part {
    let pods = tern_kube::pods::PodController::new(client.clone(), into, store.naming().clone());
    Box::new(move |_stop| -> PartFuture {
        Box::pin(async move { ("Pod controller", pods.run().await.context("following Pods and Services")) })
    })
}

/// A global's or zone's rules for what users write with kubectl, with this
/// control plane's own user (whose writes are the sync's) from the apiserver.
async fn federation(client: &kube::Client, store: &KubeStore, role: &Role) -> Result<Federation> {
    let own_user = webhook::own_username(client).await.context("asking the apiserver who this control plane is")?;
    if own_user.is_empty() {
        bail!(
            "the apiserver names no user for this control plane's credentials; a global or zone control plane \
             needs one to tell its own writes from users'"
        );
    }
    info!(user = %own_user, "multi-zone on Kubernetes: only this user may change what the other side synced");
    Ok(Federation { role: role.clone(), own_user, naming: store.naming().clone() })
}

/// This replica's name in the Lease: the host (in a Pod, the Pod's name) and
/// the process.
fn replica_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

/// The Secret in the system namespace that holds the generated CA.
const CA_SECRET: &str = "tern-control-plane-ca";

/// Makes every replica sign its serving certificate with one CA, kept in the
/// Secret `tern-control-plane-ca` of the system namespace: the first replica
/// stores the CA it generated, the others (and restarts, whose data
/// directory may be new) write it into their data directory, so the CA
/// bundle each registers for the webhooks is the same.
async fn shared_ca(client: &kube::Client, namespace: &str, data_dir: &Path) -> Result<()> {
    use tern_kube::k8s_openapi::api::core::v1::Secret;
    use tern_kube::k8s_openapi::ByteString;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let context = || format!("reading or writing Secret {CA_SECRET} in {namespace}");
    let files = [tls::ca_path(data_dir), data_dir.join("tls").join("ca.key")];
    let take = |secret: Secret| -> Result<()> {
        crate::files::create_private_dir(&data_dir.join("tls"))?;
        let data = secret.data.unwrap_or_default();
        for (file, key) in files.iter().zip(["ca.crt", "ca.key"]) {
            let value = data.get(key).with_context(|| format!("Secret {CA_SECRET} has no {key}"))?;
            crate::files::write_private(file, &value.0)?;
        }
        Ok(())
    };
    if let Some(secret) = secrets.get_opt(CA_SECRET).await.with_context(context)? {
        return take(secret);
    }
    // The first replica: the CA it generates (or has) becomes everyone's.
    tls::ensure_ca(data_dir)?;
    let mut data = std::collections::BTreeMap::new();
    for (file, key) in files.iter().zip(["ca.crt", "ca.key"]) {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        data.insert(key.to_string(), ByteString(bytes));
    }
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some(CA_SECRET.into()), ..Default::default() },
        data: Some(data),
        ..Default::default()
    };
    match secrets.create(&Default::default(), &secret).await {
        Ok(_) => Ok(()),
        // Another replica stored its CA first: take that one.
        Err(kube::Error::Api(e)) if e.code == 409 => take(secrets.get(CA_SECRET).await.with_context(context)?),
        Err(e) => Err(e).with_context(context),
    }
}

/// The CA the apiserver must trust to call the webhook.
fn webhook_ca(args: &KubeArgs, tls: &tls::TlsSource, data_dir: &Path) -> Result<String> {
    match (&tls.cert_file, &args.tls_ca_file) {
        (_, Some(ca)) => std::fs::read_to_string(ca).with_context(|| format!("reading --tls-ca-file {}", ca.display())),
        (None, None) => {
            let ca = tls::ca_path(data_dir);
            std::fs::read_to_string(&ca).with_context(|| format!("reading the generated CA {}", ca.display()))
        }
        (Some(_), None) => bail!(
            "--environment kubernetes with --tls-cert-file needs --tls-ca-file: the apiserver must be told which CA \
             to trust when it calls the admission webhook"
        ),
    }
}
