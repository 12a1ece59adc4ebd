// Pairs: one dataset's pairs, read with the API's cursor pages and filtered here (method,
// iteration, minimum reward margin). A list on the left; the opened pair on the right, with
// chosen and rejected side by side and every sentence tinted by its reward.

import { imageUrl, pairsPage, summary } from './api.js';
import { el, fmt, hashFor, mount, signed } from './dom.js';
import { hideTip, setTip } from './tooltip.js';

const PAGE_SIZE = 20; // matching pairs per page
const FETCH = 100; // pairs per API call
const SCAN_LIMIT = 2000; // pairs read for one page at most, when the filters match few

let current = null; // the pairs view on screen, for the keyboard

export const margin = (pair) => pair.chosen_score.reward - pair.rejected_score.reward;

function readFilters(params) {
  const number = (key) => {
    const v = params.get(key);
    return v === null || v === '' || Number.isNaN(Number(v)) ? null : Number(v);
  };
  return { method: params.get('method') || null, iteration: number('iteration'),
    minMargin: number('min_margin') };
}

function matches(pair, f) {
  return (f.method === null || pair.method === f.method)
    && (f.iteration === null || pair.iteration === f.iteration)
    && (f.minMargin === null || margin(pair) >= f.minMargin);
}

export async function renderPairs(root, name, params, stale) {
  const filters = readFilters(params);
  const info = await summary(name, { bins: 1 });
  if (stale()) return;
  const view = { name, filters, stale, pages: [{ cursor: null, skip: 0, offset: 0 }], at: 0,
    total: info.total, rows: [], selected: params.get('pair'),
    list: el('nav', { class: 'pair-list', 'aria-label': 'pairs' }),
    detail: el('section', { class: 'pair-detail' }),
    status: el('span', { class: 'status' }),
    prev: el('button', { type: 'button', text: '◀ Previous', disabled: true }),
    next: el('button', { type: 'button', text: 'Next ▶', disabled: true }) };
  view.prev.addEventListener('click', () => { view.at -= 1; loadPage(view); });
  view.next.addEventListener('click', () => { view.at += 1; loadPage(view); });
  current = view;
  mount(root,
    el('div', { class: 'toolbar' }, filterForm(name, info, filters),
      el('span', { class: 'spacer' }), view.status, view.prev, view.next),
    el('div', { class: 'split' }, view.list, view.detail));
  await loadPage(view);
}

function filterForm(name, info, f) {
  const select = (label, key, values, value) => el('label', {}, label,
    el('select', { name: key },
      el('option', { value: '', text: 'all' }),
      values.map((v) => el('option', { value: v, text: v, selected: String(v) === String(value) }))));
  const form = el('form', { class: 'filters' },
    select('Method', 'method', Object.keys(info.methods), f.method),
    select('Iteration', 'iteration', Object.keys(info.iterations), f.iteration),
    el('label', {}, 'Min margin', el('input', { name: 'min_margin', type: 'number', step: 'any',
      value: f.minMargin ?? '', placeholder: 'any' })),
    el('button', { type: 'submit', text: 'Apply' }));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const data = new FormData(form);
    location.hash = hashFor(['d', name, 'pairs'], { method: data.get('method'),
      iteration: data.get('iteration'), min_margin: data.get('min_margin') });
  });
  form.addEventListener('change', (e) => { if (e.target.tagName === 'SELECT') form.requestSubmit(); });
  return form;
}

/** Read from the last start position until a page of matches (or the scan limit). */
async function scan(view, start) {
  const found = [];
  let pos = start;
  let scanned = 0;
  for (;;) {
    const page = await pairsPage(view.name, pos.cursor, FETCH);
    for (let i = pos.skip; i < page.pairs.length; i++) {
      scanned += 1;
      if (matches(page.pairs[i], view.filters)) found.push(page.pairs[i]);
      if (found.length === PAGE_SIZE || scanned >= SCAN_LIMIT) {
        const rest = i + 1 < page.pairs.length;
        const next = rest ? { cursor: pos.cursor, skip: i + 1 }
          : page.next_cursor === null ? null : { cursor: page.next_cursor, skip: 0 };
        return { found, scanned, next };
      }
    }
    if (page.next_cursor === null) return { found, scanned, next: null };
    pos = { cursor: page.next_cursor, skip: 0 };
  }
}

async function loadPage(view) {
  const start = view.pages[view.at];
  view.prev.disabled = view.next.disabled = true;
  view.status.textContent = 'Loading…';
  const { found, scanned, next } = await scan(view, start);
  if (view.stale()) return;
  view.pages.length = view.at + 1;
  if (next) view.pages.push({ ...next, offset: start.offset + scanned });
  view.prev.disabled = view.at === 0;
  view.next.disabled = !next;
  const read = `${start.offset + 1}–${start.offset + scanned}`;
  view.status.textContent = `${found.length} shown · read pairs ${read} of ${view.total}`;
  view.rows = found;
  mount(view.list, found.length ? found.map((p) => listRow(view, p))
    : el('p', { class: 'empty', text: 'No pair here matches the filters.' }));
  const keep = found.find((p) => p.id === view.selected) || found[0];
  if (keep) select(view, keep);
  else mount(view.detail);
}

function listRow(view, pair) {
  const m = margin(pair);
  const row = el('button', { type: 'button', class: 'row', 'data-pair-id': pair.id },
    thumb(pair),
    el('span', { class: 'row-main' },
      el('span', { class: 'row-text', text: pair.chosen }),
      el('span', { class: 'row-meta', text: `${pair.method} · iteration ${pair.iteration}` })),
    el('span', { class: m >= 0 ? 'row-margin pos' : 'row-margin neg', title: 'reward margin',
      text: signed(m) }));
  row.addEventListener('click', () => select(view, pair));
  return row;
}

function thumb(pair) {
  const img = el('img', { class: 'thumb', alt: '' });
  if (pair.images.length) imageUrl(pair.images[0]).then((u) => { img.src = u; }, () => {});
  else img.classList.add('none');
  return img;
}

function select(view, pair) {
  view.selected = pair.id;
  for (const row of view.list.querySelectorAll('.row')) {
    row.classList.toggle('selected', row.dataset.pairId === pair.id);
  }
  revealSelected(view.list);
  const params = new URLSearchParams(location.hash.split('?')[1] || '');
  params.set('pair', pair.id);
  history.replaceState(null, '', `${location.hash.split('?')[0]}?${params}`);
  hideTip();
  mount(view.detail, pairDetail(pair));
}

document.addEventListener('keydown', (event) => {
  const view = current;
  if (!view || view.stale() || !view.rows.length) return;
  if (event.target.closest && event.target.closest('input, select, textarea')) return;
  const step = { j: 1, ArrowDown: 1, k: -1, ArrowUp: -1 }[event.key];
  if (!step) return;
  const i = view.rows.findIndex((p) => p.id === view.selected);
  const next = view.rows[Math.min(Math.max(i + step, 0), view.rows.length - 1)];
  event.preventDefault();
  select(view, next);
});

/** Scroll the list (only the list, not the page) so that the selected row shows. */
function revealSelected(list) {
  const row = list.querySelector('.row.selected');
  if (!row) return;
  const top = row.offsetTop; // the list is positioned (sticky): offsets are relative to it
  if (top < list.scrollTop || top + row.offsetHeight > list.scrollTop + list.clientHeight) {
    list.scrollTop = top - (list.clientHeight - row.offsetHeight) / 2;
  }
}

// ------------------------------------------------------------------ one pair

function pairDetail(pair) {
  const m = margin(pair);
  const scale = rewardScale(pair);
  return el('article', { class: 'pair', 'data-pair-id': pair.id },
    el('header', { class: 'pair-head' },
      el('h2', {}, el('span', { class: 'muted', text: 'pair ' }), el('code', { text: pair.id })),
      el('div', { class: 'meta' },
        el('span', { class: 'chip', text: pair.method }),
        el('span', { text: `iteration ${pair.iteration}` }),
        el('span', { text: `model ${pair.model}` }),
        pair.reference ? el('span', { text: `reference ${pair.reference}` }) : null,
        el('span', { class: m >= 0 ? 'margin pos' : 'margin neg', text: `margin ${signed(m)}` }))),
    el('div', { class: 'pair-top' },
      el('div', { class: 'images' }, pair.images.length ? pair.images.map(image)
        : el('div', { class: 'no-image', text: 'no image' })),
      el('div', { class: 'prompt-box' },
        el('h3', { text: 'Prompt' }),
        el('p', { class: 'prompt', text: pair.prompt }),
        el('p', { class: 'muted small', text: `prompt id ${pair.prompt_id}` }),
        params(pair.params))),
    el('div', { class: 'sides' },
      side('Chosen', 'chosen', pair.chosen, pair.chosen_score, scale),
      side('Rejected', 'rejected', pair.rejected, pair.rejected_score, scale)),
    legend(scale));
}

function image(id) {
  const img = el('img', { class: 'pair-image', alt: `image ${id.slice(0, 12)}`, 'data-image-id': id });
  imageUrl(id).then((u) => { img.src = u; }, (e) => { img.alt = `image unavailable: ${e.message}`; });
  return el('figure', {}, img, el('figcaption', { class: 'muted small', text: id.slice(0, 12) }));
}

function params(p) {
  const entries = Object.entries(p);
  if (!entries.length) return null;
  const rows = entries.map(([k, v]) => [el('dt', { text: k }), el('dd', { text: JSON.stringify(v) })]);
  return el('details', { class: 'params' },
    el('summary', { text: `method parameters (${entries.length})` }), el('dl', {}, rows));
}

/** The pair's lowest and highest sentence reward: tints are relative to this pair. */
function rewardScale(pair) {
  const values = [...pair.chosen_score.sentences, ...pair.rejected_score.sentences]
    .map((s) => s.reward).filter((r) => r !== null && Number.isFinite(r));
  return values.length ? { lo: Math.min(...values), hi: Math.max(...values) } : null;
}

function tint(node, reward, scale) {
  if (!scale || reward === null) return;
  const t = scale.hi > scale.lo ? (reward - scale.lo) / (scale.hi - scale.lo) : 0.5;
  const hue = Math.round(4 + t * 126); // red (low) to green (high)
  node.style.backgroundColor = `hsl(${hue} 75% 90%)`;
  node.style.borderBottomColor = `hsl(${hue} 55% 42%)`;
}

function side(label, cls, text, score, scale) {
  const body = el('p', { class: 'text' });
  const spoken = score.sentences.filter((s) => s.text.trim());
  score.sentences.forEach((s, i) => {
    const isEnd = !s.text.trim();
    const span = el('span', { class: isEnd ? 'sent end' : 'sent', text: isEnd ? 'end' : s.text });
    tint(span, s.reward, scale);
    const extra = Object.entries(s.extra).map(([k, v]) => [k, fmt(v)]);
    setTip(span, isEnd ? `${label}: end of response` : `${label}: sentence ${i + 1}`,
      [['R_T', fmt(s.r_t)], ['R_I', fmt(s.r_i)], ['R', fmt(s.reward)], ...extra]);
    body.append(span, ' ');
  });
  // Sentences are stored normalised (what CLIP saw), the text as generated: they differ in
  // spacing only, unless the pair was edited after scoring.
  const squeeze = (t) => t.replace(/\s+/g, '');
  const same = squeeze(spoken.map((s) => s.text).join('')) === squeeze(text);
  if (!spoken.length) body.append(el('span', { class: 'whole', text }));
  const stored = spoken.length && !same ? el('details', { class: 'stored' },
    el('summary', { text: 'stored text (differs from the scored sentences)' }),
    el('p', { text })) : null;
  const extras = Object.entries(score.extra);
  return el('section', { class: `side ${cls}` },
    el('h3', {}, el('span', { text: label }),
      el('span', { class: 'score', text: `R ${fmt(score.reward)}` }),
      el('span', { class: 'muted small', text: `${text.split(/\s+/).filter(Boolean).length} words` })),
    body, stored,
    extras.length ? el('dl', { class: 'extras' },
      extras.map(([k, v]) => el('div', {}, el('dt', { text: k }), el('dd', { text: fmt(v) })))) : null);
}

function legend(scale) {
  return el('footer', { class: 'legend' },
    scale ? [el('span', { text: `Sentence tint: R from ${fmt(scale.lo)}` }),
      el('span', { class: 'ramp', 'aria-hidden': 'true' }),
      el('span', { text: `${fmt(scale.hi)} (this pair). Hover a sentence for R_T · R_I · R.` })]
      : el('span', { text: 'No sentence scores in this pair (a whole-response method).' }));
}
