//! Compact caches fed by watches.
//!
//! regcred watches every namespace, ServiceAccount and Secret of the cluster.
//! A reflector store would keep each object whole (a `Secret` with its
//! metadata maps is several kilobytes); these caches keep, per object, only
//! the few fields regcred reads, so memory stays small with thousands of
//! namespaces.

use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use kube::runtime::watcher::Event;

/// A fast hash (foldhash) for keys regcred gets from the apiserver: the plan
/// looks up several per target namespace.
type Fast = foldhash::fast::RandomState;
type Names<V> = HashMap<Box<str>, V, Fast>;

/// Values by namespace and name, looked up by `&str` without allocating,
/// each namespace name stored once however many objects it holds.
pub struct ByNamespace<V>(HashMap<Box<str>, Names<V>, Fast>);

impl<V> Default for ByNamespace<V> {
    fn default() -> Self {
        ByNamespace(HashMap::default())
    }
}

impl<V> ByNamespace<V> {
    pub fn get(&self, namespace: &str, name: &str) -> Option<&V> {
        self.0.get(namespace)?.get(name)
    }

    pub fn insert(&mut self, namespace: &str, name: &str, value: V) {
        match self.0.get_mut(namespace) {
            Some(names) => {
                names.insert(name.into(), value);
            }
            None => {
                let mut names = Names::default();
                names.insert(name.into(), value);
                self.0.insert(namespace.into(), names);
            }
        }
    }

    pub fn remove(&mut self, namespace: &str, name: &str) -> Option<V> {
        let names = self.0.get_mut(namespace)?;
        let removed = names.remove(name);
        if names.is_empty() {
            self.0.remove(namespace);
        }
        removed
    }

    /// The objects of one namespace.
    pub fn in_namespace(&self, namespace: &str) -> impl Iterator<Item = (&str, &V)> {
        self.0.get(namespace).into_iter().flatten().map(|(name, v)| (&**name, v))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &V)> {
        self.0.iter().flat_map(|(ns, names)| names.iter().map(move |(name, v)| (&**ns, &**name, v)))
    }
}

/// Objects by namespace (`""` for cluster-scoped ones) and name.
pub struct Cache<V> {
    live: RwLock<ByNamespace<V>>,
    /// Filled during a (re)list; replaces `live` when the list is complete.
    relist: parking_lot::Mutex<Option<ByNamespace<V>>>,
    ready: tokio::sync::watch::Sender<bool>,
}

impl<V> Default for Cache<V> {
    fn default() -> Self {
        Cache { live: RwLock::default(), relist: Default::default(), ready: tokio::sync::watch::Sender::new(false) }
    }
}

impl<V: Clone> Cache<V> {
    /// Applies a watch event: `key` gives an object's namespace and name,
    /// `project` what is kept of it.
    pub fn apply<K>(&self, event: &Event<K>, key: impl Fn(&K) -> (String, String), project: impl Fn(&K) -> V) {
        match event {
            Event::Init => *self.relist.lock() = Some(ByNamespace::default()),
            Event::InitApply(obj) => {
                let (ns, name) = key(obj);
                if let Some(map) = self.relist.lock().as_mut() {
                    map.insert(&ns, &name, project(obj));
                }
            }
            Event::InitDone => {
                if let Some(map) = self.relist.lock().take() {
                    *self.live.write() = map;
                }
                self.ready.send_replace(true);
            }
            Event::Apply(obj) => {
                let (ns, name) = key(obj);
                self.live.write().insert(&ns, &name, project(obj));
            }
            Event::Delete(obj) => {
                let (ns, name) = key(obj);
                self.live.write().remove(&ns, &name);
            }
        }
    }

    /// Waits until the first complete list has been applied.
    pub async fn wait_until_ready(&self) {
        let mut rx = self.ready.subscribe();
        // The sender lives in `self`, so this cannot fail.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Calls `f` with one object, under the read lock.
    pub fn with<R>(&self, namespace: &str, name: &str, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.live.read().get(namespace, name).map(f)
    }

    /// The objects of one namespace, by name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<(String, V)> {
        self.live.read().in_namespace(namespace).map(|(name, v)| (name.to_string(), v.clone())).collect()
    }

    /// Calls `f` with the objects of one namespace, under the read lock
    /// (so `f` must not touch this cache).
    pub fn with_namespace<R>(&self, namespace: &str, f: impl FnOnce(&mut dyn Iterator<Item = (&str, &V)>) -> R) -> R {
        f(&mut self.live.read().in_namespace(namespace))
    }

    /// Calls `f` with every object as `(namespace, name, value)`, under the
    /// read lock (so `f` must not touch this cache).
    pub fn with_all<R>(&self, f: impl FnOnce(&mut dyn Iterator<Item = (&str, &str, &V)>) -> R) -> R {
        f(&mut self.live.read().iter())
    }
}

/// A few string pairs (labels, annotations) without a `BTreeMap`'s node
/// allocation; sorted by key. Equal sets share one allocation: the Secrets
/// regcred writes carry the same labels and annotations in every namespace,
/// so 30,000 of them hold a handful of sets (docs/benchmarks.md, "Results:
/// breadth").
#[derive(Clone, Debug, PartialEq)]
pub struct Pairs(PairSet);

type PairSet = Arc<[(Box<str>, Box<str>)]>;

/// The sets in use. Sets no entry holds any more are dropped whenever the
/// number of sets has doubled since the last sweep.
struct Interned {
    sets: HashSet<PairSet, Fast>,
    sweep_at: usize,
}

static INTERNED: LazyLock<Mutex<Interned>> =
    LazyLock::new(|| Mutex::new(Interned { sets: HashSet::default(), sweep_at: 64 }));

impl Default for Pairs {
    fn default() -> Self {
        Pairs::from_map(None)
    }
}

impl Pairs {
    pub fn from_map(map: Option<&BTreeMap<String, String>>) -> Self {
        let pairs: Vec<(Box<str>, Box<str>)> =
            map.into_iter().flatten().map(|(k, v)| (k.as_str().into(), v.as_str().into())).collect();
        let mut interned = INTERNED.lock();
        if let Some(set) = interned.sets.get(&pairs[..]) {
            return Pairs(set.clone());
        }
        if interned.sets.len() >= interned.sweep_at {
            interned.sets.retain(|set| Arc::strong_count(set) > 1);
            interned.sweep_at = (interned.sets.len() * 2).max(64);
        }
        let set: PairSet = pairs.into();
        interned.sets.insert(set.clone());
        Pairs(set)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok().map(|i| &*self.0[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(o: &(&'static str, &'static str, u32)) -> (String, String) {
        (o.0.into(), o.1.into())
    }

    #[test]
    fn a_relist_replaces_the_contents_only_when_complete() {
        let cache: Cache<u32> = Cache::default();
        let project = |o: &(&str, &str, u32)| o.2;
        cache.apply(&Event::Init, key, project);
        cache.apply(&Event::InitApply(("a", "x", 1)), key, project);
        assert_eq!(cache.with("a", "x", |v| *v), None, "not visible before the list is complete");
        cache.apply(&Event::InitDone, key, project);
        assert_eq!(cache.with("a", "x", |v| *v), Some(1));
        cache.apply(&Event::Apply(("a", "y", 2)), key, project);
        cache.apply(&Event::Apply(("b", "y", 3)), key, project);
        assert_eq!(cache.in_namespace("a").len(), 2);
        // A relist after a watch error: what is gone disappears at InitDone.
        cache.apply(&Event::Init, key, project);
        cache.apply(&Event::InitApply(("b", "y", 4)), key, project);
        assert_eq!(cache.with("a", "x", |v| *v), Some(1), "the old contents serve until the new list is complete");
        cache.apply(&Event::InitDone, key, project);
        assert_eq!(cache.with("a", "x", |v| *v), None);
        assert_eq!(cache.with("b", "y", |v| *v), Some(4));
        cache.apply(&Event::Delete(("b", "y", 4)), key, project);
        assert_eq!(cache.with_all(|it| it.count()), 0);
    }

    #[test]
    fn pairs_find_keys() {
        let map = BTreeMap::from([("b".to_string(), "2".to_string()), ("a".to_string(), "1".to_string())]);
        let p = Pairs::from_map(Some(&map));
        assert_eq!(p.get("a"), Some("1"));
        assert_eq!(p.get("b"), Some("2"));
        assert_eq!(p.get("c"), None);
        assert_eq!(Pairs::from_map(None).get("a"), None);
    }

    #[test]
    fn equal_pairs_share_one_allocation_and_unused_sets_are_swept() {
        let map = |v: &str| BTreeMap::from([("owner".to_string(), v.to_string())]);
        let a = Pairs::from_map(Some(&map("interning-test-a")));
        let b = Pairs::from_map(Some(&map("interning-test-a")));
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_ne!(a, Pairs::from_map(Some(&map("interning-test-b"))));
        // Enough distinct sets, each dropped at once, to force sweeps: the
        // set stays bounded while `a`'s survives.
        for i in 0..1000 {
            drop(Pairs::from_map(Some(&map(&format!("interning-test-{i}")))));
        }
        let interned = INTERNED.lock();
        assert!(interned.sets.len() < 200, "{} sets kept", interned.sets.len());
        assert!(interned.sets.iter().any(|s| Arc::ptr_eq(s, &a.0)));
    }
}
