// @ts-check
// The worklist: highest priority first, filters by state and route, keyboard navigation.
import { api } from './api.js';
import { el, findingText, routeBadge, ruleText, scoreCell, waiting } from './format.js';

/** @typedef {import('./result').WorklistItem} WorklistItem */

const KNOWN_STATES = ['new', 'screened', 'awaiting_review', 'reviewed', 'ineligible', 'failed'];

export class Worklist {
  constructor({ onOpen }) {
    this.onOpen = onOpen;
    this.table = document.querySelector('#worklist tbody');
    this.stateFilter = /** @type {HTMLSelectElement} */ (document.getElementById('filter-state'));
    this.routeFilter = /** @type {HTMLSelectElement} */ (document.getElementById('filter-route'));
    this.status = document.getElementById('worklist-status');
    this.empty = document.getElementById('worklist-empty');
    this.knownStates = new Set();
    KNOWN_STATES.forEach((state) => this.addStateOption(state));
    this.stateFilter.addEventListener('change', () => this.refresh());
    this.routeFilter.addEventListener('change', () => this.refresh());
    document.getElementById('refresh').addEventListener('click', () => this.refresh());
    this.table.addEventListener('keydown', (event) => this.onKey(event));
  }

  addStateOption(state) {
    if (!state || this.knownStates.has(state)) return;
    this.knownStates.add(state);
    this.stateFilter.append(el('option', { text: state.replaceAll('_', ' '), attrs: { value: state } }));
  }

  async refresh() {
    this.status.textContent = 'Loading…';
    try {
      const body = await api.worklist({ state: this.stateFilter.value, route: this.routeFilter.value });
      const items = [...(body.items || [])];
      // The service orders by priority; keep that order visible even if it did not.
      items.sort((x, y) => (y.priority?.score ?? 0) - (x.priority?.score ?? 0)
        || (y.waiting_seconds ?? 0) - (x.waiting_seconds ?? 0));
      this.render(items);
      this.status.textContent = `${items.length} ${items.length === 1 ? 'study' : 'studies'} · updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      this.status.textContent = `Could not load the worklist: ${error.message}`;
    }
  }

  /** @param {WorklistItem[]} items the rows, in the order shown */
  render(items) {
    const focusedUid = /** @type {HTMLElement | null} */ (document.activeElement)?.dataset?.uid;
    this.table.replaceChildren();
    for (const item of items) {
      this.addStateOption(item.state);
      const priority = item.priority || /** @type {Partial<WorklistItem['priority']>} */ ({});
      const firstRead = item.first_read || /** @type {Partial<WorklistItem['first_read']>} */ ({});
      const discordant = firstRead.discordant || [];
      const positives = (item.findings || []).filter((f) => f.positive && f.routes !== false);
      const row = el('tr', { attrs: { tabindex: '0', 'data-uid': item.study_instance_uid,
        'aria-label': `priority ${priority.score ?? 0}, route ${priority.route || 'none'}` } }, [
        el('td', {}, [scoreCell(priority.score)]),
        el('td', {}, [routeBadge(priority.route)]),
        el('td', { className: 'rule', text: priority.rule || '—', attrs: { title: ruleText(priority.rule) } }),
        el('td', { text: waiting(item.waiting_seconds), attrs: { title: item.received_at || '' } }),
        el('td', { text: firstRead.status || 'none' }),
        el('td', {}, discordant.length
          ? discordant.map((code) => el('span', { className: 'badge discordant', text: code }))
          : [el('span', { className: 'muted', text: '—' })]),
        el('td', { text: positives.length ? positives.map(findingText).join(', ') : 'none positive' }),
        el('td', { text: (item.state || '').replaceAll('_', ' ') }),
        el('td', { className: 'muted', text: `${item.modality || ''} ${item.study_key || ''}`.trim(),
          attrs: { title: 'pseudonymous study key' } }),
      ]);
      row.addEventListener('click', () => this.onOpen(item.study_instance_uid));
      this.table.append(row);
      if (item.study_instance_uid === focusedUid) row.focus();
    }
    this.empty.hidden = items.length > 0;
  }

  focusFirst() {
    const first = this.table.querySelector('tr');
    if (first) first.focus();
  }

  onKey(event) {
    const row = event.target.closest('tr');
    if (!row) return;
    if (event.key === 'Enter' || event.key === ' ') {
      event.preventDefault();
      this.onOpen(row.dataset.uid);
    } else if (event.key === 'ArrowDown' || event.key === 'j') {
      event.preventDefault();
      row.nextElementSibling?.focus();
    } else if (event.key === 'ArrowUp' || event.key === 'k') {
      event.preventDefault();
      row.previousElementSibling?.focus();
    }
  }
}
