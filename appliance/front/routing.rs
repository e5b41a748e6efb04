//! The routing snapshot: the sites served right now and the host table that
//! picks one per request, swapped whole when an instance is added or removed.
//!
//! A [`Routing`] is immutable. The front end keeps the current one behind an
//! [`arc_swap::ArcSwap`]: a request loads it once (no lock, no shared-counter
//! write on the common path), takes an `Arc` of its site and drops the
//! snapshot, so it keeps a removed site alive until it is logged. `add_site` and
//! `remove_site` (serialised by a lock of their own) build a new snapshot from
//! the list of sites ([`Routing::build`], the same [`VhostTable`] rules as at
//! boot) and store it. Rebuilding the table from the list, rather than
//! patching it, keeps one code path for boot, add and remove, and site indices
//! never go stale: they only exist inside one snapshot.
//!
//! Pure data apart from [`SiteRuntime::open`], which opens the web root and
//! the site's access log file.

use super::FrontError;
use super::access_log::{AccessLog, SiteSink};
use super::fastcgi::Pool;
use super::fastcgi::pool::Hold;
use super::routes::SitePlan;
use super::site::{PhpMode, Site};
use super::vhost::VhostTable;
use crate::config::PhpModeConfig;
use std::sync::Arc;

/// One instance's site as the handler sees it.
#[derive(Debug)]
pub struct SiteRuntime {
    pub instance: String,
    /// Its host names (exact or `*.` wildcards), as in its plan.
    pub domains: Vec<String>,
    /// `None` when the web root could not be opened (answers 503).
    pub site: Option<Site>,
    /// The instance's php-fpm: its socket and kept connections.
    pub php: Arc<Pool>,
    /// It has a TLS certificate: plain HTTP redirects to HTTPS and HTTPS
    /// answers carry HSTS. Known at boot only (the TLS listeners and the
    /// certificate store are set up then); a site added later has none.
    pub has_cert: bool,
    /// Its access log file; `None` when the access log is off.
    pub access: Option<Arc<SiteSink>>,
    /// Its request counters (`/metrics`).
    pub stats: super::stats::HttpStats,
}

impl SiteRuntime {
    /// Open a site from its plan. A web root that cannot be opened is logged
    /// and the site answers 503 (its php-fpm may still be provisioning);
    /// an access log file that cannot be opened is an error.
    pub fn open(
        plan: &SitePlan,
        has_cert: bool,
        access: &AccessLog,
        hold: Option<Hold>,
    ) -> Result<SiteRuntime, FrontError> {
        let mode = match plan.php_mode {
            PhpModeConfig::FrontController => PhpMode::FrontController,
            PhpModeConfig::AnyScript => PhpMode::AnyScript,
        };
        // Laravel's `public/storage` is a symlink to `storage/app/public`.
        let uploads = plan
            .public_dir
            .parent()
            .map(|app| app.join("storage/app/public"));
        let site = Site::new(&plan.public_dir, mode).and_then(|site| match uploads {
            Some(dir) if dir.is_dir() => site.allow_symlinks_into(dir),
            _ => Ok(site),
        });
        let site = match site {
            Ok(site) => Some(site),
            Err(e) => {
                tracing::error!(instance = %plan.instance, root = %plan.public_dir.display(), error = %e,
                    "web root unusable; the site answers 503");
                None
            }
        };
        let access = access
            .open_site(&plan.access_log)
            .map_err(FrontError::AccessLog)?;
        Ok(SiteRuntime {
            instance: plan.instance.clone(),
            domains: plan.domains.clone(),
            site,
            php: match hold {
                Some(hold) => Pool::holding(plan.fastcgi_socket.clone(), plan.fastcgi_pool, hold),
                None => Pool::new(plan.fastcgi_socket.clone(), plan.fastcgi_pool),
            },
            has_cert,
            access,
            stats: Default::default(),
        })
    }
}

/// The sites served and their host table, as one immutable snapshot.
#[derive(Debug, Default)]
pub struct Routing {
    sites: Vec<Arc<SiteRuntime>>,
    /// Host -> index into `sites`.
    vhosts: VhostTable,
}

impl Routing {
    /// The snapshot serving `sites`, in order: each one's domains, then
    /// `default_instance` as the default when it is among them. Domains are
    /// expected to have passed [`admit`](Self::admit) (or the boot plan's
    /// check); one that does not is logged and skipped.
    pub fn build(sites: Vec<Arc<SiteRuntime>>, default_instance: Option<&str>) -> Routing {
        let owners: Vec<String> = sites.iter().map(|s| s.instance.clone()).collect();
        let mut vhosts = VhostTable::default();
        for (i, site) in sites.iter().enumerate() {
            for name in &site.domains {
                if let Err(e) = vhosts.add(name, i, &owners) {
                    tracing::error!(instance = %site.instance, error = %e, "domain not routed");
                }
            }
        }
        let default = default_instance.and_then(|d| owners.iter().position(|o| o == d));
        if let Some(d) = default {
            vhosts.set_default(d);
        }
        Routing { sites, vhosts }
    }

    /// Whether a site for `instance` answering `domains` may join: refused
    /// when the instance already has a site, or a domain is invalid or
    /// already served (the error names it and its instance).
    pub fn admit(&self, instance: &str, domains: &[String]) -> Result<(), FrontError> {
        if self.position(instance).is_some() {
            return Err(FrontError::SiteExists(instance.to_string()));
        }
        let mut owners: Vec<String> = self.sites.iter().map(|s| s.instance.clone()).collect();
        owners.push(instance.to_string());
        let mut probe = self.vhosts.clone();
        for name in domains {
            probe
                .add(name, self.sites.len(), &owners)
                .map_err(|source| FrontError::Domain {
                    instance: instance.to_string(),
                    source,
                })?;
        }
        Ok(())
    }

    /// This snapshot plus `site` (last), if [`admit`](Self::admit) allows it.
    pub fn with(
        &self,
        site: Arc<SiteRuntime>,
        default_instance: Option<&str>,
    ) -> Result<Routing, FrontError> {
        self.admit(&site.instance, &site.domains)?;
        let mut sites = self.sites.clone();
        sites.push(site);
        Ok(Routing::build(sites, default_instance))
    }

    /// This snapshot without `instance`'s site, and that site; `None` when
    /// it has none. Its names fall to the default instance, else to none.
    pub fn without(
        &self,
        instance: &str,
        default_instance: Option<&str>,
    ) -> Option<(Routing, Arc<SiteRuntime>)> {
        let pos = self.position(instance)?;
        let mut sites = self.sites.clone();
        let gone = sites.remove(pos);
        Some((Routing::build(sites, default_instance), gone))
    }

    /// The site for a `Host` header or SNI name: an exact name, else the
    /// longest matching wildcard, else the default instance; `None`: 421.
    pub fn route(&self, host: &str) -> Option<&Arc<SiteRuntime>> {
        self.vhosts.lookup(host).and_then(|i| self.sites.get(i))
    }

    /// The sites, in the order they were added.
    pub fn sites(&self) -> &[Arc<SiteRuntime>] {
        &self.sites
    }

    fn position(&self, instance: &str) -> Option<usize> {
        self.sites.iter().position(|s| s.instance == instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::front::vhost::DomainError;

    fn site(name: &str, domains: &[&str]) -> Arc<SiteRuntime> {
        Arc::new(SiteRuntime {
            instance: name.to_string(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            site: None,
            php: Pool::new(format!("/nonexistent/{name}.sock").into(), 0),
            has_cert: false,
            access: None,
            stats: Default::default(),
        })
    }

    fn boot(default: Option<&str>) -> Routing {
        Routing::build(
            vec![
                site("fact", &["fact.rog.pe", "*.fact.rog.pe"]),
                site("tenant-x", &["*.x.fact.rog.pe"]),
                site("other", &["special.x.fact.rog.pe", "other.example"]),
            ],
            default,
        )
    }

    fn name<'a>(r: &'a Routing, host: &str) -> Option<&'a str> {
        r.route(host).map(|s| s.instance.as_str())
    }

    #[test]
    fn precedence_is_exact_then_longest_wildcard_then_default_else_none() {
        let r = boot(None);
        assert_eq!(name(&r, "special.x.fact.rog.pe"), Some("other"));
        assert_eq!(name(&r, "a.x.fact.rog.pe"), Some("tenant-x"));
        assert_eq!(name(&r, "a.fact.rog.pe"), Some("fact"));
        assert_eq!(name(&r, "FACT.rog.pe:8080"), Some("fact"));
        assert_eq!(name(&r, "unknown.example"), None);
        let r = boot(Some("tenant-x"));
        assert_eq!(name(&r, "unknown.example"), Some("tenant-x"));
        assert_eq!(name(&r, "special.x.fact.rog.pe"), Some("other"));
    }

    #[test]
    fn a_removed_instance_names_fall_to_the_default_or_none() {
        let r = boot(None);
        let (r, gone) = r.without("tenant-x", None).unwrap();
        assert_eq!(gone.instance, "tenant-x");
        // The longer wildcard is gone: the shorter one takes its hosts.
        assert_eq!(name(&r, "a.x.fact.rog.pe"), Some("fact"));
        let (r, _) = r.without("fact", None).unwrap();
        assert_eq!(name(&r, "a.fact.rog.pe"), None);
        assert_eq!(name(&r, "fact.rog.pe"), None);
        assert_eq!(name(&r, "other.example"), Some("other"));
        assert!(r.without("fact", None).is_none());

        let r = boot(Some("other"));
        let (r, _) = r.without("fact", Some("other")).unwrap();
        assert_eq!(name(&r, "fact.rog.pe"), Some("other"));
        // Indices moved: the remaining sites still get their own names.
        assert_eq!(name(&r, "a.x.fact.rog.pe"), Some("tenant-x"));
        assert_eq!(
            r.sites().iter().map(|s| &s.instance).collect::<Vec<_>>(),
            ["tenant-x", "other"]
        );
        // The default itself removed: nothing answers unknown names.
        let (r, _) = r.without("other", Some("other")).unwrap();
        assert_eq!(name(&r, "fact.rog.pe"), None);
        assert_eq!(name(&r, "other.example"), None);
        // Back again: the default again.
        let r = r
            .with(site("other", &["other.example"]), Some("other"))
            .unwrap();
        assert_eq!(name(&r, "fact.rog.pe"), Some("other"));
    }

    #[test]
    fn an_added_site_gets_its_names_under_the_same_precedence() {
        let r = boot(Some("fact"));
        let r = r
            .with(
                site("deep", &["*.a.x.fact.rog.pe", "new.example"]),
                Some("fact"),
            )
            .unwrap();
        assert_eq!(name(&r, "b.a.x.fact.rog.pe"), Some("deep"));
        assert_eq!(name(&r, "b.x.fact.rog.pe"), Some("tenant-x"));
        assert_eq!(name(&r, "new.example"), Some("deep"));
        assert_eq!(name(&r, "nobody.example"), Some("fact"));
        // A name more specific than another instance's wildcard is not a clash.
        let r = r
            .with(site("exact", &["b.x.fact.rog.pe"]), Some("fact"))
            .unwrap();
        assert_eq!(name(&r, "b.x.fact.rog.pe"), Some("exact"));
    }

    #[test]
    fn a_domain_already_served_or_an_instance_already_present_is_refused() {
        let r = boot(None);
        let err = r
            .with(site("new", &["new.example", "Other.Example"]), None)
            .unwrap_err();
        assert!(
            matches!(
                &err,
                FrontError::Domain { instance, source: DomainError::Duplicate { name, other } }
                    if instance == "new" && name == "Other.Example" && other == "other"
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "instance `new`: `Other.Example` is already served by instance `other`"
        );
        let err = r.with(site("new", &["*.x.fact.rog.pe"]), None).unwrap_err();
        assert!(err.to_string().contains("instance `tenant-x`"), "{err}");
        let err = r.with(site("new", &["bad name"]), None).unwrap_err();
        assert!(matches!(
            err,
            FrontError::Domain {
                source: DomainError::Invalid(_),
                ..
            }
        ));
        let err = r.with(site("fact", &["free.example"]), None).unwrap_err();
        assert!(matches!(&err, FrontError::SiteExists(n) if n == "fact"));
        // Nothing changed.
        assert_eq!(r.sites().len(), 3);
        assert_eq!(name(&r, "new.example"), None);
    }

    #[test]
    fn a_request_holding_a_removed_site_keeps_it() {
        let old = boot(None);
        let held = old.route("fact.rog.pe").cloned().unwrap();
        let (new, gone) = old.without("fact", None).unwrap();
        drop((old, new, gone));
        assert_eq!(held.instance, "fact");
        assert_eq!(Arc::strong_count(&held), 1);
    }
}
