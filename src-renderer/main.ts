// first: configures Zod for our CSP before any schema is created
import './zod-csp';
import './styles/base.css';
import { createPinia } from 'pinia';
import { createApp } from 'vue';
import App from './App.vue';
import { api } from './api';
import { createAppRouter } from './router';

// `api` is created when its module loads (above); the router must come after it.
void api;

const app = createApp(App);
app.use(createPinia());
app.use(createAppRouter());
app.mount('#app');
