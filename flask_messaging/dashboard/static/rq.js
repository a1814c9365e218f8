// The RQ dashboard pages of flask-messaging.
//
// A static file, never a template: nothing from a URL or from Redis is ever
// part of this script. The page gives the URLs it needs in data- attributes
// of <main id="rq">; every value read from the JSON views reaches the page
// through textContent, attribute values or checked same-site URLs, never as
// HTML. Content-Security-Policy forbids inline script, eval and other hosts.
(function () {
  "use strict";

  var root = document.getElementById("rq");
  if (!root) {
    return;
  }
  var data = root.dataset;
  var pollInterval = Math.max(parseInt(data.poll, 10) || 2500, 500);
  var canDelete = data.enableDelete === "yes";

  // An element with text children (strings) or element children.
  function el(tag, attributes, children) {
    var node = document.createElement(tag);
    Object.keys(attributes || {}).forEach(function (name) {
      var value = attributes[name];
      if (value !== null && value !== undefined) {
        node.setAttribute(name, String(value));
      }
    });
    (children || []).forEach(function (child) {
      node.appendChild(
        typeof child === "string" ? document.createTextNode(child) : child
      );
    });
    return node;
  }

  // Only paths of this site: the JSON views build them with url_for.
  function sameSite(url) {
    return typeof url === "string" && /^\/(?![\/\\])/.test(url) ? url : "#";
  }

  function jobUrl(template, jobId) {
    return template.replace("__job__", encodeURIComponent(String(jobId)));
  }

  function text(value) {
    return value === null || value === undefined ? "" : String(value);
  }

  function when(iso) {
    if (!iso) {
      return "-";
    }
    var date = new Date(iso);
    return isNaN(date.getTime()) ? text(iso) : date.toLocaleString();
  }

  var errorBox = document.getElementById("rq-error");

  function showError(error) {
    errorBox.textContent = text(error && error.message ? error.message : error);
    errorBox.hidden = false;
  }

  function clearError() {
    errorBox.hidden = true;
    errorBox.textContent = "";
  }

  function request(url, options) {
    return fetch(url, options).then(function (response) {
      if (response.ok) {
        return response.json();
      }
      // The server's reason, shown as text: JSON "error", or the plain text.
      return response.text().then(function (body) {
        var reason = body;
        try {
          reason = JSON.parse(body).error || body;
        } catch (notJSON) {
          // a plain-text answer
        }
        throw new Error(
          (options.method || "GET") + " " + url + " answered " +
            response.status + ": " + text(reason).trim()
        );
      });
    });
  }

  function getJSON(url) {
    return request(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
  }

  function post(url) {
    return request(url, { method: "POST", credentials: "same-origin" });
  }

  function fill(tbody, rows, columns, emptyText) {
    tbody.replaceChildren();
    if (rows.length === 0) {
      tbody.appendChild(
        el("tr", {}, [el("td", { colspan: columns }, [emptyText])])
      );
      return;
    }
    rows.forEach(function (row) {
      tbody.appendChild(row);
    });
  }

  // Load now, then again every pollInterval, one request at a time.
  function every(load) {
    function run() {
      load()
        .then(clearError, showError)
        .then(function () {
          setTimeout(run, pollInterval);
        });
    }
    run();
  }

  function link(url, children) {
    return el("a", { href: sameSite(url) }, children);
  }

  // A listing in pages (queues.json, workers.json): the arrows load the
  // page the answer names, the next poll stays on it.
  function listing(firstUrl, show) {
    var pages = document.getElementById("pages");
    var url = firstUrl;

    function arrow(target, label) {
      if (!target) {
        return el("li", { class: "page-item disabled" }, [
          el("span", { class: "page-link" }, [label]),
        ]);
      }
      var button = el("button", { type: "button", class: "page-link" }, [label]);
      button.addEventListener("click", function () {
        url = sameSite(target.url);
        load().then(clearError, showError);
      });
      return el("li", { class: "page-item" }, [button]);
    }

    function load() {
      return getJSON(url).then(function (answer) {
        show(answer);
        var p = answer.pagination;
        pages.replaceChildren(
          arrow(p.prev_page, "\u2039"),
          el("li", { class: "page-item disabled" }, [
            el("span", { class: "page-link" }, [
              "Page " + text(p.current_page) + " of " + text(p.num_pages) +
                " (" + text(p.total) + ")",
            ]),
          ]),
          arrow(p.next_page, "\u203a")
        );
      });
    }
    every(load);
  }

  // -- Queues ------------------------------------------------------------

  function queuesPage() {
    var tbody = document.querySelector("table#queues tbody");
    var counts = [
      ["count", "queued_url"],
      ["deferred_job_registry_count", "deferred_url"],
      ["scheduled_job_registry_count", "scheduled_url"],
      ["started_job_registry_count", "started_url"],
      ["finished_job_registry_count", "finished_url"],
      ["failed_job_registry_count", "failed_url"],
      ["canceled_job_registry_count", "canceled_url"],
    ];
    listing(data.queues, function (answer) {
        var rows = answer.queues.map(function (queue) {
          var cells = [el("td", {}, [link(queue.queued_url, [text(queue.name)])])];
          counts.forEach(function (pair) {
            cells.push(
              el("td", { class: "number" }, [
                link(queue[pair[1]], [text(queue[pair[0]])]),
              ])
            );
          });
          return el("tr", {}, cells);
        });
        fill(tbody, rows, 8, "No queues.");
    });
  }

  // -- Workers -----------------------------------------------------------

  function workersPage() {
    var tbody = document.querySelector("table#workers tbody");
    listing(data.workers, function (answer) {
        var rows = answer.workers.map(function (worker) {
          var job = worker.current_job;
          var current =
            job && typeof job === "object"
              ? el("td", {}, [
                  link(jobUrl(data.jobView, job.job_id), [text(job.description)]),
                  el("div", { class: "job-id" }, [text(job.job_id)]),
                ])
              : el("td", {}, [text(job)]);
          var title =
            worker.version && worker.python_version
              ? "RQ " + worker.version + ", Python " + worker.python_version
              : null;
          return el("tr", {}, [
            el("td", { title: title }, [text(worker.name)]),
            el("td", {}, [text(worker.state)]),
            current,
            el("td", {}, [(worker.queues || []).map(text).join(", ")]),
          ]);
        });
        fill(tbody, rows, 4, "No workers.");
    });
  }

  // -- Jobs --------------------------------------------------------------

  function jobsPage() {
    var tbody = document.querySelector("table#jobs tbody");
    var pages = document.getElementById("pages");
    var currentPage = parseInt(data.currentPage, 10);

    function jobRow(job) {
      var first = [
        el("div", { class: "description" }, [text(job.description)]),
        el("div", { class: "job-id" }, [
          link(jobUrl(data.jobView, job.id), [text(job.id)]),
        ]),
      ];
      if (job.exc_info) {
        first.push(el("div", { class: "ended" }, ["Failed " + when(job.ended_at)]));
        first.push(el("pre", { class: "exc_info" }, [text(job.exc_info)]));
      }
      var actions = [];
      if (job.unlisted) {
        // An id that is not text: no URL can name it; Empty removes it.
        return el("tr", {}, [
          el("td", {}, first),
          el("td", {}, [when(job.created_at)]),
          el("td", { class: "narrow" }, []),
        ]);
      }
      if (job.exc_info) {
        actions.push(
          el("button", { type: "button", class: "btn btn-outline-warning btn-sm",
            "data-job-action": "requeue", "data-job-id": job.id }, ["Requeue"])
        );
      }
      if (canDelete) {
        actions.push(
          el("button", { type: "button", class: "btn btn-outline-danger btn-sm",
            "data-job-action": "delete", "data-job-id": job.id }, ["Delete"])
        );
      }
      return el("tr", {}, [
        el("td", {}, first),
        el("td", {}, [when(job.created_at)]),
        el("td", { class: "narrow" }, actions),
      ]);
    }

    function pageItem(target, label, active) {
      var item = el("li", { class: "page-item" + (active ? " active" : "") }, [
        target ? el("a", { class: "page-link", href: sameSite(target.url) }, [label])
               : el("span", { class: "page-link" }, [label]),
      ]);
      if (!target) {
        item.classList.add("disabled");
      }
      return item;
    }

    function load() {
      return getJSON(data.jobs).then(function (answer) {
        fill(tbody, answer.jobs.map(jobRow), 3, answer.error || "No jobs.");
        var p = answer.pagination;
        var items = [pageItem(p.num_pages > 1 ? p.first_page : null, "\u00ab")];
        items.push(pageItem(p.prev_page || null, "\u2039"));
        p.pages_in_window.forEach(function (target) {
          items.push(pageItem(target, text(target.number), target.number === currentPage));
        });
        items.push(pageItem(p.next_page || null, "\u203a"));
        items.push(pageItem(p.num_pages > 1 ? p.last_page : null, "\u00bb"));
        pages.replaceChildren.apply(pages, items);
      });
    }

    tbody.addEventListener("click", function (event) {
      var button = event.target.closest("button[data-job-action]");
      if (!button) {
        return;
      }
      var action = button.getAttribute("data-job-action");
      var jobId = button.getAttribute("data-job-id");
      if (action === "delete" && !window.confirm("Delete this job?")) {
        return;
      }
      var template = action === "delete" ? data.jobDelete : data.jobRequeue;
      post(jobUrl(template, jobId)).then(load).catch(showError);
    });

    document.querySelectorAll("button[data-action]").forEach(function (button) {
      button.addEventListener("click", function () {
        if (window.confirm(button.getAttribute("data-confirm"))) {
          post(button.getAttribute("data-action")).then(load).catch(showError);
        }
      });
    });

    document.getElementById("filter").addEventListener("submit", function (event) {
      event.preventDefault();
      var perPage = parseInt(document.getElementById("select-per-page").value, 10);
      window.location.assign(
        [
          data.jobsView,
          encodeURIComponent(document.getElementById("select-queue").value),
          encodeURIComponent(document.getElementById("select-registry").value),
          perPage > 0 ? perPage : 8,
          encodeURIComponent(document.getElementById("select-order").value),
          1,
        ].join("/")
      );
    });

    every(load);
  }

  // -- One job -----------------------------------------------------------

  function jobPage() {
    var list = document.getElementById("job-data");
    var excInfo = document.getElementById("job-exc-info");
    var requeue = document.getElementById("requeue-job");
    var remove = document.getElementById("delete-job");
    var jobId = data.jobId;
    var fields = [
      ["Description", "description"],
      ["Origin queue", "origin"],
      ["Status", "status"],
      ["Result", "result"],
      ["Metadata", "metadata"],
      ["Created", "created_at", when],
      ["Enqueued", "enqueued_at", when],
      ["Started", "started_at", when],
      ["Ended", "ended_at", when],
    ];

    requeue.addEventListener("click", function () {
      post(jobUrl(data.jobRequeue, jobId)).catch(showError);
    });
    if (remove) {
      remove.addEventListener("click", function () {
        if (window.confirm("Delete this job?")) {
          post(jobUrl(data.jobDelete, jobId))
            .then(function () {
              window.location.assign(sameSite(data.queuesView));
            })
            .catch(showError);
        }
      });
    }

    every(function () {
      return getJSON(data.job).then(function (job) {
        var items = [];
        fields.forEach(function (field) {
          var value = job[field[1]];
          items.push(el("dt", { class: "col-3" }, [field[0]]));
          items.push(
            el("dd", { class: "col-9" }, [field[2] ? field[2](value) : text(value)])
          );
        });
        list.replaceChildren.apply(list, items);
        excInfo.textContent = text(job.exc_info);
        requeue.hidden = job.status !== "failed";
      });
    });
  }

  var pagesByName = {
    queues: queuesPage,
    workers: workersPage,
    jobs: jobsPage,
    job: jobPage,
  };
  var page = pagesByName[data.page];
  if (page) {
    page();
  }
})();
