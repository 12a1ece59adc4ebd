// Distributions: per iteration, histograms of chosen vs rejected reward, mean sentence R_I
// (CSR's Figure 5) and length in words; and the table of mean lengths (SBSPO's Table 2).
// Plain SVG, no library.

import { summary } from './api.js';
import { el, fmt, hashFor, mount, signed, svg } from './dom.js';

const W = 320; // chart size in SVG units (it scales with its box)
const H = 170;
const PAD = { left: 34, right: 10, top: 10, bottom: 36 };

export async function renderDistributions(root, name, params, stale) {
  const first = await summary(name, { bins: 1 });
  if (stale()) return;
  const methods = Object.keys(first.methods);
  // Rewards of different methods are on different scales: one method at a time.
  const method = params.get('method') || methods[0] || null;
  const s = await summary(name, { method, bins: 24 });
  if (stale()) return;
  const picker = el('select', { name: 'method' }, methods.map((m) =>
    el('option', { value: m, text: `${m} (${s.methods[m]} pairs)`, selected: m === method })));
  picker.addEventListener('change', () => {
    location.hash = hashFor(['d', name, 'dist'], { method: picker.value });
  });
  mount(root,
    el('div', { class: 'toolbar' }, el('label', {}, 'Method', picker),
      el('span', { class: 'spacer' }), el('span', { class: 'status', text: `${s.pairs} pairs` }),
      el('span', { class: 'key' }, el('i', { class: 'sw chosen' }), 'chosen',
        el('i', { class: 'sw rejected' }), 'rejected')),
    el('h2', { text: 'Length and reward by iteration' }),
    lengthTable(s.groups.filter((g) => g.method === method)),
    el('h2', { text: 'Histograms by iteration' }),
    s.distributions.length ? s.distributions.map(iterationRow)
      : el('p', { class: 'empty', text: 'No pairs.' }));
}

function lengthTable(groups) {
  const head = ['Iteration', 'Pairs', 'Chosen words', 'Rejected words', 'Δ words',
    'Chosen R', 'Rejected R', 'Mean margin', 'Chosen R_I', 'Rejected R_I'];
  const delta = (g) => (g.chosen_words === null ? null : g.chosen_words - g.rejected_words);
  return el('table', { class: 'grid lengths' },
    el('thead', {}, el('tr', {}, head.map((h) => el('th', { text: h })))),
    el('tbody', {}, groups.map((g) => el('tr', {},
      [g.iteration, g.pairs, fmt(g.chosen_words), fmt(g.rejected_words), signed(delta(g)),
        fmt(g.chosen_reward), fmt(g.rejected_reward), signed(g.margin), fmt(g.chosen_r_i),
        fmt(g.rejected_r_i)].map((v, i) => el('td', { class: i ? 'num' : '', text: v }))))));
}

function iterationRow(d) {
  return el('section', { class: 'iteration' },
    el('h3', { text: `Iteration ${d.iteration} · ${d.pairs} pairs` }),
    el('div', { class: 'charts' },
      chart('Reward (response)', d.reward),
      chart('R_I (mean per response) — CSR Fig. 5', d.r_i),
      chart('Length (words) — SBSPO Table 2', d.words)));
}

/** One histogram: chosen and rejected bars side by side in each bin, dashed means. */
function chart(title, h) {
  const box = el('figure', { class: 'chart' }, el('figcaption', { text: title }));
  if (!h) {
    box.append(el('p', { class: 'empty small', text: 'not in these pairs' }));
    return box;
  }
  const bins = h.chosen.length;
  const top = Math.max(1, ...h.chosen, ...h.rejected);
  const lo = h.edges[0];
  const hi = h.edges[bins];
  const x = (v) => PAD.left + ((v - lo) / (hi - lo)) * (W - PAD.left - PAD.right);
  const y = (c) => H - PAD.bottom - (c / top) * (H - PAD.top - PAD.bottom);
  const g = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title });
  for (let i = 0; i < bins; i++) {
    const x0 = x(h.edges[i]);
    const w = (x(h.edges[i + 1]) - x0) / 2; // chosen on the left half, rejected on the right
    const range = `[${fmt(h.edges[i])}, ${fmt(h.edges[i + 1])})`;
    for (const [side, count, dx] of [['chosen', h.chosen[i], 0], ['rejected', h.rejected[i], w]]) {
      if (!count) continue;
      const bar = { class: `bar ${side}`, x: x0 + dx + 0.3, y: y(count),
        width: Math.max(w - 0.6, 0.5), height: y(0) - y(count) };
      g.append(svg('rect', bar, svg('title', { text: `${side}: ${count} in ${range}` })));
    }
  }
  for (const [side, mean] of [['chosen', h.chosen_mean], ['rejected', h.rejected_mean]]) {
    if (mean === null) continue;
    const line = { class: `mean ${side}`, x1: x(mean), x2: x(mean), y1: PAD.top, y2: y(0) };
    g.append(svg('line', line, svg('title', { text: `${side} mean ${fmt(mean)}` })));
  }
  const label = (cls, px, py, anchor, text) =>
    svg('text', { class: cls, x: px, y: py, 'text-anchor': anchor, text });
  const mid = (PAD.left + W - PAD.right) / 2;
  const below = H - PAD.bottom + 14;
  g.append(
    svg('line', { class: 'axis', x1: PAD.left, x2: W - PAD.right, y1: y(0), y2: y(0) }),
    svg('line', { class: 'axis', x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: y(0) }),
    label('tick', PAD.left - 4, PAD.top + 8, 'end', top),
    label('tick', PAD.left - 4, y(0), 'end', 0),
    label('tick', PAD.left, below, 'start', fmt(lo)),
    label('tick', mid, below, 'middle', fmt((lo + hi) / 2)),
    label('tick', W - PAD.right, below, 'end', fmt(hi)),
    label('means', mid, H - 6, 'middle',
      `mean chosen ${fmt(h.chosen_mean)} · rejected ${fmt(h.rejected_mean)}`));
  box.append(g);
  return box;
}
