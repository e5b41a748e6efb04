//! The front end's own error pages, rendered once at start from
//! `assets/errors/page.html` (by the one template renderer, [`assets::render_str`]), so a 502 while php-fpm restarts is a clean page
//! and not a bare status line. Touches nothing.

use crate::assets;
use bytes::Bytes;
use std::collections::HashMap;

/// Statuses the front end answers itself, with their title and explanation.
const PAGES: &[(u16, &str, &str)] = &[
    (400, "Bad Request", "The request could not be understood."),
    (403, "Forbidden", "You do not have access to this resource."),
    (404, "Not Found", "The page you asked for does not exist."),
    (
        405,
        "Method Not Allowed",
        "This resource does not accept that method.",
    ),
    (
        408,
        "Request Timeout",
        "The request took too long to arrive.",
    ),
    (
        413,
        "Content Too Large",
        "The request body is larger than this site accepts.",
    ),
    (
        421,
        "Misdirected Request",
        "This server does not serve that host name.",
    ),
    (
        431,
        "Request Header Fields Too Large",
        "The request headers are too large.",
    ),
    (
        500,
        "Internal Server Error",
        "Something went wrong on our side.",
    ),
    (
        502,
        "Bad Gateway",
        "The application is not answering right now. It is being restarted; please try again in a moment.",
    ),
    (
        503,
        "Service Unavailable",
        "The application is not available right now.",
    ),
    (
        504,
        "Gateway Timeout",
        "The application took too long to answer.",
    ),
];

#[derive(Debug, Clone)]
pub struct ErrorPages(HashMap<u16, Bytes>);

impl ErrorPages {
    pub fn render() -> Self {
        let template = assets::asset_text("errors/page.html").unwrap_or("{{ status }} {{ title }}");
        let map = PAGES
            .iter()
            .map(|(status, title, message)| {
                let ctx = serde_json::json!({"status": status, "title": title, "message": message});
                // The shipped template always renders; fall back to a bare line if not.
                let html = assets::render_str(template, &ctx)
                    .unwrap_or_else(|_| format!("{status} {title}\n"));
                (*status, Bytes::from(html))
            })
            .collect();
        Self(map)
    }

    /// The page for `status`, or a generic one.
    pub fn get(&self, status: u16) -> Bytes {
        self.0
            .get(&status)
            .cloned()
            .or_else(|| self.0.get(&500).cloned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_is_complete_html_naming_its_status() {
        let pages = ErrorPages::render();
        for (status, title, _) in PAGES {
            let body = String::from_utf8(pages.get(*status).to_vec()).unwrap();
            assert!(body.contains(&format!("{status}")), "{status}");
            assert!(body.contains(title), "{status}");
            assert!(!body.contains("{{"), "unrendered placeholder in {status}");
        }
    }
}
