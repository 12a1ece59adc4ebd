// The pair viewer: three read-only views, chosen by the URL hash.
//   #/                         Datasets
//   #/d/NAME/pairs?method=&iteration=&min_margin=&pair=ID
//   #/d/NAME/dist?method=

import { forgetKey, hasKey, listDatasets, summary } from './api.js';
import { renderDistributions } from './charts.js';
import { el, fmt, hashFor, mount, parseHash } from './dom.js';
import { renderPairs } from './pairs.js';
import { hideTip, installTooltip } from './tooltip.js';

const main = document.getElementById('main');
const crumbs = document.getElementById('crumbs');
let generation = 0; // a view started later wins: an earlier one stops drawing

/** Draw the view the hash names. */
async function route() {
  const mine = ++generation;
  hideTip();
  const stale = () => mine !== generation;
  const { parts, params } = parseHash();
  try {
    if (parts[0] === 'd' && parts.length === 3 && parts[2] === 'pairs') {
      setCrumbs(parts[1], 'Pairs');
      await renderPairs(main, parts[1], params, stale);
    } else if (parts[0] === 'd' && parts.length === 3 && parts[2] === 'dist') {
      setCrumbs(parts[1], 'Distributions');
      await renderDistributions(main, parts[1], params, stale);
    } else {
      setCrumbs(null, null);
      await renderDatasets(stale);
    }
  } catch (error) {
    if (!stale()) showError(error);
  }
}

function setCrumbs(name, view) {
  const items = [el('a', { href: '#/', text: 'Datasets' })];
  if (name !== null) {
    items.push(el('span', { class: 'sep', text: '/' }), el('span', { class: 'ds', text: name }));
    for (const [label, key] of [['Pairs', 'pairs'], ['Distributions', 'dist']]) {
      const current = view === label;
      items.push(
        el('a', {
          href: hashFor(['d', name, key]),
          class: current ? 'tab current' : 'tab',
          'aria-current': current ? 'page' : null,
          text: label,
        }),
      );
    }
  }
  mount(crumbs, items);
}

export function showError(error) {
  const where = error.field ? ` (field: ${error.field})` : '';
  mount(
    main,
    el('div', { class: 'banner error', role: 'alert' },
      el('strong', { text: error.status ? `Error ${error.status}` : 'Error' }),
      ` ${error.message}${where}`),
  );
}

/** Datasets: names and sizes at once, then each one's methods and iterations as they come. */
async function renderDatasets(stale) {
  const { datasets } = await listDatasets();
  if (stale()) return;
  if (!datasets.length) {
    mount(main, el('p', { class: 'empty' },
      'No datasets yet. Pairs arrive with POST /v1/datasets/NAME/pairs (e.g. `selfreward pairs`).'));
    return;
  }
  const rows = datasets.map((d) => datasetRow(d));
  mount(
    main,
    el('h1', { text: 'Datasets' }),
    el('table', { class: 'grid datasets' },
      el('thead', {}, el('tr', {}, ['Dataset', 'Pairs', 'Methods', 'Iterations', 'Mean margin', '']
        .map((h) => el('th', { text: h })))),
      el('tbody', {}, rows.map((r) => r.tr))),
  );
  await Promise.all(rows.map((r) => r.fill(stale)));
}

function datasetRow(d) {
  const cells = { methods: el('td', { class: 'muted', text: '…' }),
    iterations: el('td', { class: 'muted', text: '…' }), margin: el('td', { class: 'num' }) };
  const tr = el('tr', { 'data-dataset': d.name },
    el('td', {}, el('a', { class: 'ds', href: hashFor(['d', d.name, 'pairs']), text: d.name })),
    el('td', { class: 'num', text: d.count.toLocaleString('en') }),
    cells.methods, cells.iterations, cells.margin,
    el('td', { class: 'links' },
      el('a', { href: hashFor(['d', d.name, 'pairs']), text: 'Pairs' }),
      el('a', { href: hashFor(['d', d.name, 'dist']), text: 'Distributions' })));
  async function fill(stale) {
    try {
      const s = await summary(d.name, { bins: 1 });
      if (stale()) return;
      mount(cells.methods, Object.entries(s.methods).map(([m, n]) =>
        el('span', { class: 'chip', title: `${n} pairs` }, m, el('small', { text: ` ${n}` }))));
      mount(cells.iterations, Object.keys(s.iterations).join(', '));
      const sum = s.groups.reduce((a, g) => a + (g.margin ?? 0) * g.pairs, 0);
      mount(cells.margin, fmt(s.total ? sum / s.total : null));
      cells.methods.className = cells.iterations.className = '';
    } catch (error) {
      mount(cells.methods, el('span', { class: 'error', text: error.message }));
    }
  }
  return { tr, fill };
}

function start() {
  installTooltip(main);
  const forget = document.getElementById('forget-key');
  forget.hidden = !hasKey();
  forget.addEventListener('click', () => {
    forgetKey();
    forget.hidden = true;
    route();
  });
  window.addEventListener('hashchange', route);
  route();
}

start();
